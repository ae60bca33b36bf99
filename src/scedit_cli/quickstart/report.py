"""The quickstart's report: the summary table and report.md."""

from __future__ import annotations

from pathlib import Path


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(score, before, after) rows for the final table."""
    st, c = report["style"], report["control"]
    f = "{:.2f}".format
    return [
        (f"style score '{st['style']}' (<sce> prompts; VAE ceiling {f(st['vae_ceiling'])})",
         f(st["before"]["style"]), f(st["after"]["style"])),
        ("colour accuracy (<sce> prompts)", f(st["before"]["colour"]), f(st["after"]["colour"])),
        ("shape / position accuracy (<sce> prompts)",
         f"{f(st['before']['shape'])} / {f(st['before']['position'])}",
         f"{f(st['after']['shape'])} / {f(st['after']['position'])}"),
        ("edge F1 vs canny map (base -> canny CSC)", f(c["base"]["edge_f1"]), f(c["canny"]["edge_f1"])),
        ("colour-map error (base -> colour CSC)", f(c["base"]["color_error"]), f(c["color"]["color_error"])),
        ("compose (.5,.5): edge F1 / colour error", f"{f(c['base']['edge_f1'])} / {f(c['base']['color_error'])}",
         f"{f(c['compose_mid']['edge_f1'])} / {f(c['compose_mid']['color_error'])}"),
        ("compose (1,0) = canny, (0,1) = colour: max pixel diff", "-",
         f"{c['compose_identity']['weights_1_0_vs_canny_max_abs_diff']} / "
         f"{c['compose_identity']['weights_0_1_vs_color_max_abs_diff']}"),
    ]


CLEAR_GAIN = 0.05  # a score change below this on 16 prompts is reported as no clear change


def _change(before: float, after: float, higher_is_better: bool = True, clear: float = CLEAR_GAIN) -> str:
    d = (after - before) if higher_is_better else (before - after)
    if d >= clear:
        return f"improved ({before:.3f} -> {after:.3f})"
    if d <= -clear:
        return f"got worse ({before:.3f} -> {after:.3f})"
    return f"did not change clearly ({before:.3f} -> {after:.3f}, within {clear:.3g})"


def _style_notes(st: dict) -> list[str]:
    b, a = st["before"], st["after"]
    notes = [f"Measured here: the SC-Tuner's style score {_change(b['style'], a['style'])}; colour accuracy "
             f"{b['colour']:.3f} -> {a['colour']:.3f}."]
    if st["style"] == "half":
        notes += ["", "Shape accuracy is read by fitting filled circle / square / triangle templates; the upper half "
                  f"of a shape often fits another one (the real `half` images of these prompts read right "
                  f"{st['real_shape']:.2f} of the time), so a lower shape accuracy after the SC-Tuner is the style, "
                  "not lost content."]
    return notes


def _control_notes(c: dict) -> list[str]:
    b = c["base"]
    return [f"Measured here (the control prompts do not name the position: only the map says where the shape "
            f"is): with the canny CSC-Tuner the edge F1 {_change(b['edge_f1'], c['canny']['edge_f1'])} and the "
            f"position accuracy {_change(b['position'], c['canny']['position'])}; with the colour CSC-Tuner the "
            f"edge F1 {_change(b['edge_f1'], c['color']['edge_f1'])}, the position accuracy "
            f"{_change(b['position'], c['color']['position'])} and the colour-map error "
            f"{_change(b['color_error'], c['color']['color_error'], False, 0.25 * b['color_error'])}, over the "
            "base without control."]


def render_markdown(report: dict) -> str:
    st, c, tr, tm = report["style"], report["control"], report["training"], report["timing"]
    f = "{:.3f}".format
    lines = [
        "# scedit quickstart report",
        "",
        f"Toy Stable Diffusion (32 px, `{report['base_model']}`), CPU, {tm['processes']} processes "
        f"with {tm['torch_threads']} torch thread(s) each, {tm['machine']} (load average "
        f"{tm['load_average_1min_at_end']:.1f} at the end). Total wall {tm['wall_s']:.0f} s, CPU {tm['cpu_s']:.0f} s.",
        "",
        "## Summary (before -> after)",
        "",
        "| score | before | after |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {cc} |" for a, b, cc in summary_rows(report)],
        "",
        "## 1. A new style with an SC-Tuner",
        "",
        f"{st['n']} held-out prompts with the `<sce>` trigger, DDIM {report['sampling']['steps']} steps, "
        f"guidance {report['sampling']['guidance_scale']}, seed {report['sampling']['seed']}. Rows: "
        + ", ".join(report["grids"]["style_rows"]) + ".",
        "",
        "![style](grids/style.png)",
        "",
        "| | style | colour | shape | position | background | all four right |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in ("before", "after"):
        r = st[k]
        lines.append(f"| {k} | {f(r['style'])} | {f(r['colour'])} | {f(r['shape'])} | {f(r['position'])} | "
                     f"{f(r['background'])} | {f(r['all'])} |")
    lines += [
        "",
        f"VAE ceiling: real '{st['style']}' images encoded and decoded by the base VAE score "
        f"{f(st['vae_ceiling'])} on the style score (1.0 before the round trip). The SC-Tuner only changes "
        "the latents the U-Net produces, so it cannot score above what the VAE can decode.",
        "",
        *_style_notes(st),
        "",
        "## 2. Controls with CSC-Tuners, and composing them",
        "",
        f"{c['n']} held-out prompts whose shapes sit up to {report['data']['control_jitter_px']} px off the "
        "named position; the maps come from the real image. Edge F1: Canny edges of the generated image against "
        "the canny map, 1 px tolerance. Colour error: mean absolute difference (0..1) of the colour maps. Rows: "
        + ", ".join(report["grids"]["control_rows"]) + ".",
        "",
        "![control](grids/control.png)",
        "",
        "| images | edge F1 | colour error | colour | shape | position | all four right |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"base": "base, no control", "canny": "canny CSC", "color": "colour CSC",
             "compose_1_0": "compose (1, 0)", "compose_mid": "compose (.5, .5)", "compose_0_1": "compose (0, 1)"}
    for k, label in names.items():
        r = c[k]
        lines.append(f"| {label} | {f(r['edge_f1'])} | {f(r['color_error'])} | {f(r['colour'])} | {f(r['shape'])} | "
                     f"{f(r['position'])} | {f(r['all'])} |")
    lines += ["", *_control_notes(c)]
    ci = c["compose_identity"]
    lines += [
        "",
        f"Compose with weights (1, 0) vs the canny tuner alone: largest pixel difference "
        f"{ci['weights_1_0_vs_canny_max_abs_diff']}; (0, 1) vs the colour tuner alone: "
        f"{ci['weights_0_1_vs_color_max_abs_diff']} (0 = identical images).",
        "",
        "## 3. Training",
        "",
        "| run | recipe | steps | s/step | wall s | CPU s | loss first 10% | loss last 10% | curve |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, r in tr.items():
        lines.append(f"| {k} | `{Path(r['recipe']).name}` | {r['steps']} | {r['s_per_step']:.2f} | {r['wall_s']:.0f} | "
                     f"{r['cpu_s']:.0f} | {f(r['loss_first10pct'])} | {f(r['loss_last10pct'])} | "
                     f"[{r['loss_curve']}]({r['loss_curve']}) |")
    lines += ["", *[f"![{k} loss]({r['loss_curve']})" for k, r in tr.items() if r.get("loss_curve")], ""]
    lines += ["## 4. The same steps as commands", "", "```bash"]
    lines += [v for v in report["commands"].values()]
    lines += ["```", "", "## Timing", "", "| stage | wall s | CPU s |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} |" for k, v in tm["stages"].items()]
    lines += [f"| total | {tm['wall_s']:.1f} | {tm['cpu_s']:.1f} |", ""]
    par = report["parallel"]
    runs = {**{k: report["training"][k] for k in (*par["main"], *par["second"]) if k in report["training"]},
            "sample": par["second_sample"]}
    lines += ["The train stage runs " + ", ".join(par["main"]) + " in this process and " + ", ".join(par["second"])
              + " in a second one, at the same time:", "",
              "| job | process | wall s | CPU s |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {'main' if k in par['main'] else 'second'} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} |"
              for k, v in runs.items()]
    lines += [""]
    return "\n".join(lines)
