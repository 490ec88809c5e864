"""Operations on a whole store: relocating a moved one, pulling, migrating, opening the UI."""
