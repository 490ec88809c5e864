"""Cache the VGG16 ImageNet (no top) weights in $KERAS_HOME/models, once.

    kerasflow weights      (`make weights`; internet; the image has them baked in)
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.parse_args(argv)

    def go() -> None:
        from kerasflow.train import weights

        weights.fetch()

    return cli.guard(go)
