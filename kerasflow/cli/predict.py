"""Send image files to a served model (`make serve`) and print each one's predicted class.

The image size and class names come from the model's metadata in the tracking store (--model), or
from --image-size and --classes when the store is not at hand.

examples:
  kerasflow predict --model models:/malaria@champion cell1.png cell2.png
  kerasflow predict --url http://127.0.0.1:5001 --image-size 96 --classes parasitized,uninfected x.png
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--url", default="http://127.0.0.1:5001", help="model server (default: %(default)s)")
    p.add_argument("--model", help="model URI, to read image size and class names from its metadata")
    cli.store_flags(p, experiment=False)
    p.add_argument("--image-size", type=int)
    p.add_argument("--classes", help="comma-separated class names, in label order")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.errors import UserError
        from kerasflow.serve import serving

        meta = serving.model_metadata(args.model, args.store) if args.model else {}
        size = args.image_size or meta.get("image_size")
        classes = args.classes.split(",") if args.classes else meta.get("class_names")
        if not size or not classes:
            raise UserError("image size and class names unknown: pass --model URI, or --image-size N "
                            "and --classes a,b")
        predictions = serving.request(args.url, serving.load_images(args.images, int(size)))
        for path, (name, probability) in zip(args.images, serving.describe(predictions, classes),
                                             strict=True):
            print(f"{path}\t{name}\t{probability:.4f}")

    return cli.guard(go)
