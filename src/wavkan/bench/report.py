"""Results out: the CSV, the printed table and report, the PNG plots."""

from __future__ import annotations

import csv
import io
import os
import textwrap
from typing import Sequence


from ..files import atomic_write
from .protocol import (
    CSV_COLUMNS, CUDA_PORT, MODES, NET_PROVIDERS, OP_PROVIDERS, PROTOCOLS, RECORDED_NOTE, RECORDED_SOURCE,
)

def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(rows: Sequence[dict], path) -> None:
    """Write ``rows`` with the columns CSV_COLUMNS (missing keys left empty), atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# (header, width, right-aligned, cell) for the printed table
_TABLE = {
    "src": ("src", 4, False, lambda r: _SRC_TAGS.get(r["source"], r["source"][:4])),
    "provider": ("provider", 22, False, lambda r: r["provider"]),
    "wavelet": ("wavelet", 11, False, lambda r: r["wavelet"] or "-"),
    "mode": ("mode", 8, False, lambda r: r["mode"]),
    "shape": ("B x in x out", 15, False, lambda r: r["shape"]),
    "median": ("median ms", 10, True, lambda r: _fmt(r["median_ms"], ".4g")),
    "p20": ("p20", 8, True, lambda r: _fmt(r["p20_ms"], ".4g")),
    "p80": ("p80", 8, True, lambda r: _fmt(r["p80_ms"], ".4g")),
    "geval": ("Geval/s", 8, True, lambda r: _fmt(None if r["evals_per_s"] is None else r["evals_per_s"] / 1e9, ".1f")),
    "ceil": ("%ceil", 6, True, lambda r: _fmt(None if r["frac_ceiling"] is None else 100 * r["frac_ceiling"], ".1f")),
    "peak": ("peak GB", 8, True, lambda r: _fmt(r["peak_gb"], ".3g")),
    "abs": ("abs GB", 7, True, lambda r: _fmt(r["peak_abs_gb"], ".3g")),
    "host": ("host ms", 8, True, lambda r: _fmt(r["host_ms"], ".3g")),
    "gpu": ("gpu ms", 8, True, lambda r: _fmt(r["median_ms"], ".4g")),
    "sync": ("sync ms", 8, True, lambda r: _fmt(r["latency_ms"], ".4g")),
    "mean": ("mean", 8, True, lambda r: _fmt(r["mean_ms"], ".4g")),
    "params": ("params", 9, True, lambda r: _fmt(r["params"], "d")),
    "first": ("1st s", 8, True, lambda r: _fmt(r["first_call_s"], ".3g")),
    "case": ("B x in x out, kernel, size, stride/pad/dil/groups", 44, False, lambda r: r["shape"]),
    "limit": ("limit ms", 9, True, lambda r: _fmt(r.get("limit_ms"), ".3g")),
    "flimit": ("%limit", 7, True, lambda r: _fmt(None if r.get("frac_limit") is None else 100 * r["frac_limit"], ".1f")),
    "memio": ("mem/io", 7, True, lambda r: _fmt(None if r["peak_gb"] is None or not r.get("io_gb")
                                               else r["peak_gb"] / r["io_gb"], ".3g")),  # fmt: skip
    "status": ("status", 0, False, lambda r: _status_cell(r)),
}
_SRC_TAGS = {"measured": "meas", RECORDED_SOURCE: "rec", "dry-run": "fake", "given": "giv"}


def _status_cell(r: dict) -> str:
    note = r["note"] or ""
    if r["source"] == RECORDED_SOURCE:  # the src column says it
        note = note.replace(RECORDED_NOTE, "").strip("; ")
    return (r["status"] + (f": {note}" if note else ""))[:72]

OP_TABLE = ("src", "provider", "mode", "shape", "gpu", "p20", "p80", "sync", "host", "geval", "ceil", "peak", "status")
CONV_TABLE = ("src", "provider", "mode", "case", "median", "p20", "p80", "limit", "flimit", "peak", "memio", "host",
              "status")  # fmt: skip
NET_TABLE = ("src", "provider", "wavelet", "mode", "median", "p20", "p80", "mean", "host", "first", "params", "ceil",
             "abs", "status")  # fmt: skip


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Fixed-width text table of ``rows`` with the named columns of ``_TABLE``."""
    specs = [_TABLE[c] for c in columns]

    def line(cells):
        return " ".join(c.rjust(w) if right else c.ljust(w) for (_, w, right, _), c in zip(specs, cells)).rstrip()

    out = [line([h for h, _, _, _ in specs])]
    out += [line([str(cell(r)) for _, _, _, cell in specs]) for r in rows]
    return "\n".join(out)


_PROVIDER_ORDER = ("wavkan", "wavkan-compiled", "wavkan-reduce-overhead", "wavkan-graphed", "linear",
                   "reference-compiled", "paper-compiled", "reference-eager", "paper-eager", "mlp", "mlp-compiled",
                   "mlp-graphed")  # fmt: skip


def _table_order(r: dict) -> tuple:
    return (
        r["source"] == RECORDED_SOURCE,
        MODES.index(r["mode"]) if r["mode"] in MODES else len(MODES),
        _PROVIDER_ORDER.index(r["provider"]) if r["provider"] in _PROVIDER_ORDER else len(_PROVIDER_ORDER),
        r["provider"],
        r["wavelet"] or "",
        r["B"] or 0,
        r["IN"] or 0,
        r["OUT"] or 0,
    )


def format_report(rows: Sequence[dict]) -> str:
    """The printed summary: the ceiling, then op tables per (wavelet, dtype), network tables per
    (protocol, dtype), conv tables per (wavelet, dtype)."""
    out = []
    for r in rows:
        if r["level"] == "ceiling":
            rate = _fmt(r["evals_per_s"], ".3e")
            line = f"exp2 ceiling, {r['source']}: {rate} /s"
            if r["status"] != "ok":
                line += f" ({r['status']})"
            out.append(line + (f"  [{r['note']}]" if r["note"] else ""))
    op_rows = [r for r in rows if r["level"] == "op"]
    for wavelet, dtype in dict.fromkeys((r["wavelet"], r["dtype"]) for r in op_rows):
        group = sorted((r for r in op_rows if (r["wavelet"], r["dtype"]) == (wavelet, dtype)), key=_table_order)
        out.append(f"\nOp level, one layer without BN ({wavelet}, {dtype})")
        out.append(format_table(group, OP_TABLE))
    out += format_network_tables(rows)
    conv_rows = [r for r in rows if r["level"] == "conv"]
    for wavelet, dtype in dict.fromkeys((r["wavelet"], r["dtype"]) for r in conv_rows):
        group = sorted((r for r in conv_rows if (r["wavelet"], r["dtype"]) == (wavelet, dtype)),
                       key=lambda r: (r["shape"], _table_order(r)))  # fmt: skip
        out.append(f"\nConv level, one layer without BN ({wavelet}, {dtype})")
        out.append(format_table(group, CONV_TABLE))
    if conv_rows:
        out.append(
            "\nConv: limit ms = the joint limit of the exp unit (one exp per wavelet value and pass) and the FMA"
            " pipe (one FMA per tap forward, two more backward), the two side by side; %limit = limit / median;"
            "\nmem/io = peak extra memory / bytes of x, y, the parameters and a gradient of each."
        )
    out.append(
        "\nGeval/s = B*in*out (summed over layers) / median time; %ceil = Geval/s * passes / exp2 ceiling"
        " (passes = 2 for full, else 1);\npeak GB = peak allocated above what was allocated before the step;"
        " abs GB = max_memory_allocated; rec = recorded (benchmarks/RECORDED.md), not measured.\nOp level: gpu ms ="
        " GPU time, the host having queued each call ahead (a GPU spin before the start event); sync ms = events"
        " around each call\nwith a synchronize after it, the GPU idle before (what a caller waits for); host ms ="
        " the host's time per call: where it exceeds gpu ms, a loop of calls is host-bound.\nNetwork level: each"
        " protocol's events around model(x) and loss.backward(), a synchronize after each (host time included"
        " whenever the GPU waits for it);\nhost ms = the host's time of the call; 1st s = wall time of the untimed"
        " first step(s) (compiles), never in the statistics; params = sum(p.numel()) of the model."
    )
    return "\n".join(out)



def format_network_tables(rows: Sequence[dict]) -> list:
    """One table per (protocol, dtype) of the network rows, titled with the protocol and the
    statistic it publishes."""
    out = []
    net_rows = [r for r in rows if r["level"] == "network"]
    for protocol, dtype in dict.fromkeys((r["protocol"] or CUDA_PORT.name, r["dtype"]) for r in net_rows):
        group = sorted((r for r in net_rows if (r["protocol"] or CUDA_PORT.name, r["dtype"]) == (protocol, dtype)),
                       key=_table_order)  # fmt: skip
        known = PROTOCOLS.get(protocol)
        title = known.title if known else protocol
        statistic = f"; its figure: the {known.statistic}" if known else ""
        out.append(f"\nNetwork level, {title} ({dtype}{statistic})")
        out.append(format_table(group, NET_TABLE))
    return out


def _network_plot(ax_title, bars, stat, path):
    """Forward and backward bars per provider (hatched: recorded), log scale; returns ``path``."""
    from ..files import new_figure, save_png

    names = list(bars)
    fig = new_figure((max(6, 1.1 * len(names) + 2), 4.5))
    ax = fig.subplots()
    width = 0.4
    for k, mode in enumerate(("forward", "backward")):
        xs = [j + (k - 0.5) * width for j in range(len(names))]
        vals = [bars[n].get(mode, 0) or 0 for n in names]
        hatch = ["//" if n.endswith("(rec.)") else "" for n in names]
        rects = ax.bar(xs, vals, width, label=mode)
        for rect, h in zip(rects, hatch):
            rect.set_hatch(h)
        ax.bar_label(rects, labels=[f"{v:.3g}" if v else "" for v in vals], fontsize=6)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(f"ms ({stat})")
    ax.set_title(textwrap.fill(ax_title, 100), fontsize=8)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_results(rows: Sequence[dict], out_dir) -> list:
    """PNG plots: op throughput against B per mode (with the exp2 ceiling) and network bars.

    Returns the written paths; [] with a note when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'wavkan[bench]')")
        return []
    from ..files import new_figure, save_png

    paths = []
    ceilings = [(r["source"], r["evals_per_s"]) for r in rows if r["level"] == "ceiling" and r["evals_per_s"]]
    ok = [r for r in rows if r["status"] == "ok" and r["median_ms"] is not None]
    measured = [r for r in ok if r["source"] != RECORDED_SOURCE]
    recorded = [r for r in ok if r["source"] == RECORDED_SOURCE]

    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    known = list(OP_PROVIDERS) + [p for p in NET_PROVIDERS if p not in OP_PROVIDERS]
    extra = []

    def color(provider):
        if provider not in known and provider not in extra:
            extra.append(provider)
        k = known.index(provider) if provider in known else len(known) + extra.index(provider)
        return palette[k % len(palette)]

    def groups(level):
        keys = []
        for r in measured:
            if r["level"] == level and (r["wavelet"], r["dtype"]) not in keys and r["wavelet"]:
                keys.append((r["wavelet"], r["dtype"]))
        return keys

    for wavelet, dtype in groups("op"):
        sel = [r for r in measured if r["level"] == "op" and (r["wavelet"], r["dtype"]) == (wavelet, dtype)]
        modes = [m for m in MODES if any(r["mode"] == m for r in sel)]
        fig = new_figure((5.5 * len(modes), 4.5))
        axes = fig.subplots(1, len(modes), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            lines = {}
            for r in sel:
                if r["mode"] == mode:
                    lines.setdefault((r["provider"], r["IN"], r["OUT"]), []).append((r["B"], r["exps_per_s"]))
            combos = list(dict.fromkeys((i, o) for _, i, o in lines))
            many = len(combos) > 1
            for (provider, i, o), pts in lines.items():
                pts.sort()
                label = provider + (f" {i}x{o}" if many else "")
                style = ("-", "--", "-.", ":")[combos.index((i, o)) % 4]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle=style, color=color(provider),
                        label=label)  # fmt: skip
            if wavelet == "mexican_hat" and dtype == "fp32":  # the recorded figures' setting
                rec = {}
                for r in recorded:
                    if r["level"] == "op" and r["mode"] == mode:
                        rec.setdefault(r["provider"], []).append((r["B"], r["exps_per_s"]))
                for provider, pts in rec.items():
                    ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", s=50, color=color(provider),
                               label=f"{provider} (recorded)")  # fmt: skip
            for source, rate in ceilings:
                style = ":" if source == RECORDED_SOURCE else "-"
                ax.axhline(rate, color="k", linestyle=style, linewidth=1, label=f"exp2 ceiling ({source}) {rate:.3g}/s")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch B" + ("" if many else f" (in = {i}, out = {o})"))
            ax.set_ylabel("evaluations/s" + (" per pass (2 passes)" if mode == "full" else ""))
            ax.set_title(f"{mode}: {wavelet}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_png(fig, os.path.join(out_dir, f"op_throughput_{wavelet}_{dtype}.png"), dpi=120))

    net = [r for r in measured if r["level"] == "network"]
    for protocol, dtype in dict.fromkeys((r["protocol"] or CUDA_PORT.name, r["dtype"]) for r in net):
        known = PROTOCOLS.get(protocol)
        stat = known.statistic if known else "median"
        sel = [r for r in net if (r["protocol"] or CUDA_PORT.name, r["dtype"]) == (protocol, dtype)]
        for wavelet in sorted({r["wavelet"] for r in sel if r["wavelet"]}) or [""]:
            bars = {}
            for r in sel:
                if r["wavelet"] in (wavelet, ""):
                    bars.setdefault(r["provider"], {})[r["mode"]] = r[f"{stat}_ms"]
            recorded_setting = protocol == CUDA_PORT.name and wavelet in ("mexican_hat", "") and dtype == "fp32"
            if recorded_setting:
                for r in recorded:
                    if r["level"] == "network":
                        bars.setdefault(f"{r['provider']} (rec.)", {})[r["mode"]] = r["median_ms"]
            title = (f"{known.title if known else protocol}:\n{wavelet or 'mlp'}, {dtype}"
                     + ("; hatched: recorded (benchmarks/RECORDED.md), not measured here" if recorded_setting else ""))  # fmt: skip
            prefix = "network" if protocol == CUDA_PORT.name else f"network_{protocol}"
            path = os.path.join(out_dir, f"{prefix}_{wavelet or 'mlp'}_{dtype}.png")
            paths.append(_network_plot(title, bars, stat, path))
    return paths
