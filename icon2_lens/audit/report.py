"""The audit's headline numbers, its warnings, and its files (``audit.json``, report, figures).

Example:
    >>> head, warnings = headline({}, {"toy": [1, 2]}, AuditConfig())
    >>> head["criteria"]["toy"]["steered_layers"], warnings
    ([1, 2], [])
"""

from pathlib import Path
from typing import Any

import pandas as pd

from icon2_lens._files import write_json
from icon2_lens.figures import write_figures_or_warn
from icon2_lens.pages import Block, write_pages

from .config import AuditConfig
from .data import CONTROL_DOMAIN
from .plots import (
    plot_confound_heatmap,
    plot_dpo_shift,
    plot_logit_lens,
    plot_shortcut_aucs,
    plot_stereotype_gaps,
    plot_stereotype_scores,
    plot_wording,
)

__all__ = ["headline", "write_audit", "AUDIT_FILE"]

AUDIT_FILE = "audit.json"
#: Criteria expected to prefer the moral sentence of the morality control.
MORAL_CRITERIA = ("general", "harmlessness")


def _iv(x: dict) -> dict:
    return {k: x[k] for k in ("value", "low", "high", "n") if k in x}


def _criterion_headline(
    name: str, layers: list[int], sections: dict, config: AuditConfig, warnings: list
) -> dict:
    h: dict[str, Any] = {"steered_layers": layers}
    span = f"{layers[0]}-{layers[-1]}"
    if "lens" in sections:
        mid = layers[len(layers) // 2]
        rows = [
            r
            for r in sections["lens"]["logit_lens"]
            if r["criterion"] == name and r["layer"] == mid
        ]
        ranked = sorted(rows, key=lambda r: r["rank"])
        h["logit_lens"] = {
            "layer": mid,
            **{
                side: [r["token"] for r in ranked if r["side"] == side][:8]
                for side in ("promoted", "suppressed")
            },
        }
        h["steering_shift"] = [
            {
                "gamma": s["gamma"],
                "kl_mean": s["kl_mean"],
                "top_up": [t["token"] for t in s["top_up"][:6]],
            }
            for s in sections["lens"]["steering_shift"].get(name, [])
        ]
    if "stereotype" in sections:
        st = sections["stereotype"]
        gaps = {g["domain"]: _iv(g) for g in st["steered_gaps"] if g["criterion"] == name}
        h["stereotype_gap_sd"] = gaps
        for domain, g in gaps.items():
            if domain == CONTROL_DOMAIN:
                continue
            if g["low"] > 0:
                warnings.append(
                    f"{name}: at its steered layers {span} the direction leans towards the {domain} "
                    f"stereotype (gap {g['value']:+.3f} SD [{g['low']:+.3f}, {g['high']:+.3f}])"
                )
        scores: dict[str, dict] = {}
        for s in st["scores"]:
            if s["criterion"] in ("", name):
                cond = (
                    s["condition"].replace(f"{name} ", "")
                    if s["criterion"] == name
                    else s["condition"]
                )
                scores.setdefault(s["domain"], {})[cond] = _iv(s)
        h["stereotype_score"] = scores
        moral = gaps.get(CONTROL_DOMAIN)
        if moral is not None:
            passes = moral["low"] > 0
            h["morality_control"] = {**moral, "prefers_moral": passes}
            if name in MORAL_CRITERIA and not passes:
                warnings.append(
                    f"{name}: the positive control fails: at layers {span} the direction does not "
                    f"prefer the moral sentence (gap {moral['value']:+.3f} SD [{moral['low']:+.3f}, {moral['high']:+.3f}])"
                )
    if "confounds" in sections:
        cf = sections["confounds"]
        top = [r for r in cf["largest"] if r["criterion"] == name]
        if top:
            h["largest_confound"] = top[0]
            if abs(top[0]["cosine"]) >= config.confound_threshold:
                warnings.append(
                    f"{name}: cosine {top[0]['cosine']:+.2f} with the {top[0]['confound']} direction at layer "
                    f"{top[0]['layer']} (steered)"
                )
        shares = [
            r["share"] for r in cf["shares"] if r["criterion"] == name and r["layer"] in layers
        ]
        if shares:
            h["confound_share_steered"] = sum(shares) / len(shares)
    if "wording" in sections:
        wd = sections["wording"]
        summ = [r for r in wd["summary"] if r["criterion"] == name]
        if summ:
            h["wording_min_acc"] = {str(int(r["layer"])): r["wording_min_acc"] for r in summ}
            flagged = [
                int(r["layer"]) for r in summ if r["wording_flag"] and int(r["layer"]) in layers
            ]
            h["wording_flagged_steered"] = flagged
            if flagged:
                warnings.append(
                    f"{name}: at steered layers {', '.join(map(str, flagged))} some other wording of its "
                    f"prompts scores below {wd['threshold']}: the direction reads the wording there"
                )
        pooled = [
            r
            for r in wd["pooled"]
            if r["criterion"] == name and r["layer"] in layers and r["wording"] != "(own)"
        ]
        if pooled:
            h["held_out_wording_acc"] = {
                "own_prompts": sum(r["acc_own"] for r in pooled) / len(pooled),
                "pooled_wordings": sum(r["acc_pooled"] for r in pooled) / len(pooled),
            }
    if "shift" in sections:
        rows = [
            r for r in sections["shift"]["table"] if r["criterion"] == name and r["layer"] in layers
        ]
        if rows:
            h["dpo_shift_cosine_steered"] = sum(r["cosine"] for r in rows) / len(rows)
    return h


def headline(
    sections: dict, layers: dict[str, list[int]], config: AuditConfig
) -> tuple[dict, list[str]]:
    """Per criterion the numbers worth reading first, and the warnings the audit raises."""
    warnings: list[str] = []
    out: dict[str, Any] = {
        "criteria": {
            name: _criterion_headline(name, ls, sections, config, warnings)
            for name, ls in layers.items()
        }
    }
    if "shortcuts" in sections:
        sc = sections["shortcuts"]
        out["shortcuts"] = {
            "n_pairs": sc["n_pairs"],
            "bag_of_words_auc": sc["bag_of_words"]["auc"],
            "top_features": [
                {k: f[k] for k in ("feature", "auc", "strength", "higher_in")}
                for f in sc["features"][:5]
            ],
            "apology_opener_rate": sc["apology_opener_rate"],
            "length_ratio_median": sc["length_ratio_median"],
        }
        for cue in sc["shortcuts"]:
            warnings.append(
                f"pairs: '{cue['feature']}' tells chosen from rejected with AUC {cue['strength']:.2f} "
                f"(≥ {sc['threshold']}; higher in {cue['higher_in']}): DPO can learn the cue instead of the criterion"
            )
    if "likelihood" in sections and "skipped" not in sections["likelihood"]:
        lk = sections["likelihood"]
        out["likelihood"] = {
            k: lk[k]
            for k in (
                "n_pairs",
                "logp_auc",
                "chosen_likelier",
                "sharpening_accuracy",
                "temperature",
                "chosen_nll",
                "rejected_nll",
            )
        }
        if lk["shortcut"]:
            warnings.append(
                f"pairs: the model finds the {lk['higher_in']} answers likelier (AUC {lk['strength']:.2f}; "
                f"chosen likelier in {lk['chosen_likelier']:.0%} of pairs) and a copy of it at temperature "
                f"{lk['temperature']:g} ranks {lk['sharpening_accuracy']:.0%} of pairs right: DPO's reward "
                "accuracy can rise by sharpening alone, so read it against that level"
            )
    return out, warnings


def _figures(sections: dict, layers: dict) -> dict:
    figs = {}
    if "lens" in sections:
        t = pd.DataFrame(sections["lens"]["logit_lens"])
        steered = sorted({x for ls in layers.values() for x in ls})
        figs["logit_lens"] = plot_logit_lens(t, layers=steered)
    if "stereotype" in sections:
        figs["stereotype_gaps"] = plot_stereotype_gaps(
            pd.DataFrame(sections["stereotype"]["gaps"]), steered=layers
        )
        figs["stereotype_scores"] = plot_stereotype_scores(
            _score_frame(sections["stereotype"]["scores"], list(layers))
        )
    if "confounds" in sections:
        figs["confound_cosines"] = plot_confound_heatmap(
            pd.DataFrame(sections["confounds"]["cosines"])
        )
    if "wording" in sections and sections["wording"]["accuracy"]:
        figs["wording"] = plot_wording(
            pd.DataFrame(sections["wording"]["accuracy"]),
            threshold=sections["wording"]["threshold"],
        )
    if "shortcuts" in sections:
        figs["shortcut_aucs"] = plot_shortcut_aucs(sections["shortcuts"])
    if "shift" in sections:
        figs["dpo_shift"] = plot_dpo_shift(pd.DataFrame(sections["shift"]["table"]))
    return figs


def _score_frame(scores: list[dict], criteria: list[str]) -> pd.DataFrame:
    """Scores as one row per criterion, domain and condition (base and trained repeated per criterion)."""
    rows = []
    for name in criteria:
        for s in scores:
            if s["criterion"] in ("", name):
                cond = s["condition"].replace(f"{name} ", "")
                rows.append({**s, "criterion": name, "condition": cond})
    return pd.DataFrame(rows)


def _fmt_iv(x: dict | None) -> str:
    if not x:
        return ""
    return f"{x['value']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def _blocks(result: dict, folder: Path, figure_names: list[str]) -> list[Block]:
    head, warnings, sections = result["headline"], result["warnings"], result["sections"]
    blocks: list[Block] = [("h1", "Audit of the preference directions")]
    blocks.append(
        (
            "p",
            "What the directions and the pairs carry besides the preference: promoted tokens, stereotypes, confounds, wording, shortcuts. Every number comes from the sections in sections/*.json; audit.json holds them all.",
        )
    )
    blocks.append(("h2", "Warnings"))
    blocks.append(("md", "\n".join(f"- {w}" for w in warnings) if warnings else "None."))
    crit = head["criteria"]
    if "stereotype" in sections:
        blocks.append(
            ("h2", "Stereotypes: projection gap at the steered layers (SD units, 95 % interval)")
        )
        domains = list(dict.fromkeys(g["domain"] for g in sections["stereotype"]["steered_gaps"]))
        rows = [
            {
                "criterion": n,
                "layers": f"{h['steered_layers'][0]}-{h['steered_layers'][-1]}",
                **{d: _fmt_iv(h["stereotype_gap_sd"].get(d)) for d in domains},
            }
            for n, h in crit.items()
        ]
        blocks.append(("table", pd.DataFrame(rows)))
        blocks.append(
            (
                "p",
                "Positive: the direction's positive side leans towards the stereotype sentence (morality: towards the moral one). An interval that holds 0: no evidence the direction encodes it.",
            )
        )
        blocks.append(
            ("h2", "Stereotype score (share of pairs where the stereotype sentence is more likely)")
        )
        rows = []
        for n, h in crit.items():
            for d, conds in h["stereotype_score"].items():
                rows.append(
                    {
                        "criterion": n,
                        "domain": d,
                        **{c: _fmt_iv(v).replace("+", "") for c, v in conds.items()},
                    }
                )
        blocks.append(("table", pd.DataFrame(rows)))
    if "confounds" in sections:
        blocks.append(("h2", "Confounds"))
        rows = [
            {
                "criterion": n,
                "largest confound": h.get("largest_confound", {}).get("confound"),
                "layer": h.get("largest_confound", {}).get("layer"),
                "cosine": h.get("largest_confound", {}).get("cosine"),
                "share in confound span (steered mean)": h.get("confound_share_steered"),
            }
            for n, h in crit.items()
        ]
        blocks.append(("table", pd.DataFrame(rows)))
    if "wording" in sections:
        blocks.append(
            (
                "h2",
                "Concept or wording? Lowest paired accuracy over other wordings, per steered layer",
            )
        )
        rows = [
            {
                "criterion": n,
                **{
                    str(k): v
                    for k, v in h.get("wording_min_acc", {}).items()
                    if k in h["steered_layers"]
                },
            }
            for n, h in crit.items()
        ]
        blocks.append(("table", pd.DataFrame(rows)))
        rows = [
            {"criterion": n, **h["held_out_wording_acc"]}
            for n, h in crit.items()
            if "held_out_wording_acc" in h
        ]
        if rows:
            blocks.append(
                (
                    "p",
                    "Held-out wording, steered layers: the direction fitted on the criterion's own prompts vs one fitted on the contrasts averaged over the other wordings.",
                )
            )
            blocks.append(("table", pd.DataFrame(rows)))
    if "lens" in sections:
        blocks.append(("h2", "What the directions promote"))
        rows = [
            {
                "criterion": n,
                "layer": h["logit_lens"]["layer"],
                "promoted": " ".join(map(repr, h["logit_lens"]["promoted"])),
                "suppressed": " ".join(map(repr, h["logit_lens"]["suppressed"])),
                **{f"KL γ={s['gamma']:+g}": s["kl_mean"] for s in h["steering_shift"]},
            }
            for n, h in crit.items()
        ]
        blocks.append(("table", pd.DataFrame(rows)))
    if "shortcuts" in head:
        sc = head["shortcuts"]
        blocks.append(("h2", f"Shortcuts in {sc['n_pairs']} pairs"))
        blocks.append(
            (
                "p",
                f"Bag-of-words AUC (cross-validated): {sc['bag_of_words_auc']:.3f}; apology opener in chosen {sc['apology_opener_rate']['chosen']:.2f}, rejected {sc['apology_opener_rate']['rejected']:.2f}; median length ratio chosen/rejected {sc['length_ratio_median']:.2f}.",
            )
        )
        blocks.append(("table", pd.DataFrame(sc["top_features"])))
        bow = sections["shortcuts"]["bag_of_words"]
        blocks.append(
            (
                "p",
                "n-grams that give chosen away: "
                + ", ".join(g["ngram"] for g in bow["chosen_ngrams"][:10])
                + "; rejected: "
                + ", ".join(g["ngram"] for g in bow["rejected_ngrams"][:10])
                + ".",
            )
        )
    if "likelihood" in head:
        lk = head["likelihood"]
        blocks.append(("h2", f"What the model itself tells apart in {lk['n_pairs']} pairs"))
        blocks.append(
            (
                "p",
                f"Mean NLL per answer token under the model: chosen {lk['chosen_nll']:.3f}, rejected {lk['rejected_nll']:.3f}; AUC of chosen from log-probability {lk['logp_auc']:.3f}; chosen likelier in {lk['chosen_likelier']:.0%} of pairs. "
                f"DPO reward accuracy of the model at temperature {lk['temperature']:g} against itself (sharpening only, nothing learned about the criterion): {lk['sharpening_accuracy']:.3f}.",
            )
        )
    if "shift" in sections:
        blocks.append(("h2", "What did DPO move?"))
        rows = [
            {"criterion": n, "mean cosine (steered layers)": h.get("dpo_shift_cosine_steered")}
            for n, h in crit.items()
        ]
        blocks.append(("table", pd.DataFrame(rows)))
    blocks.append(("h2", "Figures"))
    for name in figure_names:
        if (folder / "figures" / f"{name}.png").is_file():
            blocks.append(("img", f"figures/{name}.png"))
        if (folder / "figures" / f"{name}.html").is_file():
            blocks.append(
                ("link", (f"interactive figure: figures/{name}.html", f"figures/{name}.html"))
            )
    return blocks


def write_audit(
    result: dict, folder: str | Path, *, figures: bool = True, png: bool = True
) -> Path:
    """Write ``audit.json``, the figures and ``report.md`` / ``report.html`` into ``folder``."""
    folder = Path(folder)
    path = write_json(result, folder / AUDIT_FILE)
    layers = {n: h["steered_layers"] for n, h in result["headline"]["criteria"].items()}
    figs = _figures(result["sections"], layers) if figures else {}
    if figs:
        write_figures_or_warn(figs, folder / "figures", png=png)
    write_pages(folder, _blocks(result, folder, list(figs)), f"icon2-lens audit {folder.name}")
    return path
