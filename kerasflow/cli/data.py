"""Download and prepare the TFDS dataset of the config (malaria) into tfds_data_dir, once.

    kerasflow data [--config ...] [--set tfds_data_dir=...]     (`make data`; internet)
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.train import fetch

        cfg = cli.load_config(args)
        fetch.fetch_data(cfg.tfds_name, cfg.tfds_data_dir)

    return cli.run(go)
