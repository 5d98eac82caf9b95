"""Text renderings of weights entries: the ``edsr weights list`` table, ``edsr weights info``,
and docs/models.md's model tables (``scripts/models_doc.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from edsr import defaults
from edsr.weights.entry import PROTOCOL_BENCHMARK, PROTOCOL_DIV2K, WeightsEntry
from edsr.weights.registry import list_entries


def _scales_text(e: WeightsEntry) -> str:
    return "/".join(f"x{s}" for s in e.scales)


def _metric_text(e: WeightsEntry, dataset: str) -> str:
    vals = [e.metric(dataset, s) for s in e.scales]
    if not any(vals):
        return "-"
    return " / ".join(f"{m.psnr:.2f}" if m else "-" for m in vals)


def _size_text(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 2**20:.1f} MiB"


def format_table(
    entries: Iterable[WeightsEntry] | None = None, *, local: Mapping[str, str] | None = None
) -> str:
    """The plain-text table ``edsr weights list`` prints; ``local`` adds a column (name -> text)."""
    entries = list_entries() if entries is None else list(entries)
    head = [
        "name",
        "arch",
        "scales",
        "BxF",
        "res_scale",
        "params",
        "size",
        "source",
        "DIV2K PSNR",
        "Set5 PSNR",
    ]
    if local is not None:
        head.append("local")
    rows = [head]
    for e in entries:
        row = [
            e.name,
            e.arch,
            _scales_text(e),
            f"{e.n_resblocks}x{e.n_feats}",
            f"{e.res_scale:.1f}",
            f"{e.parameters / 1e6:.2f}M",
            _size_text(e.size),
            e.source,
            _metric_text(e, "DIV2K-val"),
            _metric_text(e, "Set5"),
        ]
        if local is not None:
            row.append(local.get(e.name, "-"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"PSNR in dB. DIV2K: {PROTOCOL_DIV2K}; Set5: {PROTOCOL_BENCHMARK}; official rows "
        "published, trained-here rows measured. 'edsr weights info NAME' for the rest"
    )
    checks: dict[str, set[str]] = {}
    for e in entries:
        checks.setdefault(e.hash_check, set()).add(e.source)
    lines.append(
        "Files are checked against "
        + "; ".join(f"{c} ({', '.join(sorted(s))})" for c, s in checks.items())
    )
    return "\n".join(lines)


def readme_table(entries: Iterable[WeightsEntry] | None = None) -> str:
    """The Markdown tables between docs/models.md's ``<!-- models:start/end -->`` markers."""
    entries = list_entries() if entries is None else list(entries)
    lines = [
        "| `--model` | architecture | res_scale | parameters | DIV2K-val PSNR | Set5 PSNR "
        "| source | license |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        arch = f"{e.arch.upper()} {e.n_resblocks}x{e.n_feats}, {_scales_text(e)}"
        source = e.source
        if e.training is not None:
            source += f" ({e.training.iterations:,} it)"
        psnr = f"{_metric_text(e, 'DIV2K-val')} | {_metric_text(e, 'Set5')}"
        lines.append(
            f"| `{e.name}` | {arch} | {e.res_scale:.1f} | {e.parameters:,} | {psnr} "
            f"| {source} | {e.license} |"
        )
    lines.append("")
    lines.append(
        f"PSNR in dB, x2 / x3 / x4. DIV2K-val: {PROTOCOL_DIV2K}; Set5: {PROTOCOL_BENCHMARK}. "
        "Official entries show the authors' published numbers (Set5: the paper's, for EDSR and "
        "MDSR), not re-measured here; entries trained here show `edsr eval --json` results. "
        "Generated from `edsr.weights.catalogue` by `python scripts/models_doc.py`."
    )
    for e in entries:
        if e.training is not None and e.metrics:
            lines += ["", metrics_table(e)]
    return "\n".join(lines)


def metrics_table(e: WeightsEntry) -> str:
    """Markdown table of a trained-here entry's measured PSNR / SSIM, plain and self-ensemble."""
    datasets = list(dict.fromkeys(m.dataset for m in e.metrics))
    cols = [(s, False) for s in e.scales] + [
        (s, True) for s in e.scales if e.metric(datasets[0], s, self_ensemble=True)
    ]
    head = " | ".join(f"x{s}{'+' if ens else ''}" for s, ens in cols)
    protocols = {m.protocol.replace(f"shave {m.scale}", "shave scale") for m in e.metrics}
    protocol = protocols.pop() if len(protocols) == 1 else "protocol per row in the registry"
    lines = [
        f"`{e.name}`, measured by `edsr eval --json` (PSNR dB / SSIM; {protocol}; "
        "`+`: self-ensemble):",
        "",
        f"| data set | {head} |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for d in datasets:
        cells = []
        for s, ens in cols:
            m = e.metric(d, s, self_ensemble=ens)
            cells.append(
                "-"
                if m is None
                else f"{m.psnr:.2f} / {m.ssim:.4f}"
                if m.ssim is not None
                else f"{m.psnr:.2f}"
            )
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    if any("| - |" in line or line.endswith("| - |") for line in lines):
        lines += ["", "`-`: not measured yet (a self-ensemble pass costs 8 plain ones)."]
    t = e.training
    assert t is not None
    lines += [
        "",
        f"Trained with `{t.command}` ({t.iterations:,} iterations, "
        f"{t.wall_time_s / 3600:.1f} h on {t.hardware}).",
    ]
    if t.notes:
        lines.append(t.notes)
    return "\n".join(lines)


def describe(entry: WeightsEntry) -> str:
    """Every field of ``entry`` as ``edsr weights info`` prints it."""
    e = entry
    lines = [
        f"name:        {e.name}" + (f" (also {', '.join(e.aliases)})" if e.aliases else ""),
        f"description: {e.description}" if e.description else "",
        f"config:      {json.dumps(e.config())}",
        f"scales:      {' '.join(f'x{s}' for s in e.scales)} "
        f"(default x{defaults.default_scale(e.scales)})",
        f"parameters:  {e.parameters:,} (learned; the fixed mean shifts left out)",
        f"file:        {e.filename}" + (f" (bundled: assets/{e.bundled})" if e.bundled else ""),
        f"size:        {'unknown' if e.size is None else f'{e.size:,} bytes'}",
        f"sha256:      {e.sha256} (checked: {e.hash_check})",
        f"license:     {e.license}",
        f"source:      {e.source}",
    ]
    if e.training is not None:
        t = e.training
        lines += [
            f"command:     {t.command}",
            f"iterations:  {t.iterations:,}",
            f"wall time:   {t.wall_time_s / 3600:.2f} h",
            f"hardware:    {t.hardware}",
        ]
        if t.data:
            lines.append(f"data:        {t.data}")
        if t.notes:
            lines.append(f"notes:       {t.notes}")
    for i, u in enumerate(e.urls):
        lines.append(f"{'urls:' if i == 0 else '':<13}{u}")
    for m in e.metrics:
        ssim = f" / {m.ssim:.4f}" if m.ssim is not None else ""
        ens = " (self-ensemble)" if m.self_ensemble else ""
        lines.append(
            f"{'metrics:' if m is e.metrics[0] else '':<13}{m.dataset} x{m.scale}{ens}: "
            f"{m.psnr:.2f} dB{ssim}  [{m.kind}; {m.protocol}]"
        )
    return "\n".join(line for line in lines if line)
