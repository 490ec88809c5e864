"""Download the configured data source where it needs it (TFDS malaria into tfds_data_dir), once; a
source read from disk or drawn needs nothing.

    kerasflow data [--config ...] [--set tfds_data_dir=...]     (`make data`; internet)
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.train import sources

        print(sources.fetch(cli.load_config(args)))

    return cli.guard(go)
