"""Turns a benchmark result into the tables and plots of docs/benchmarks.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

_SERVERS = (
    ("echo", "tab:gray", "echo (transport floor)"),
    ("transport", "tab:orange", "rnnserve transport, no-op engine"),
    ("rnnserve", "tab:blue", "rnnserve"),
)
BEGIN = "<!-- bench:results:begin (written by bench/run.py; edit outside these markers) -->"
END = "<!-- bench:results:end -->"


def _ms(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1e3:.3f}"


def _us(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1e6:.1f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    """The generated results section (tables only; the prose around it is written by hand)."""
    floors, runs = data["floors"], data["scenarios"]
    settings = data["settings"]
    lines = [
        f"Run {data['started_at']}, model `{data['model']['name']}` ({data['model']['origin']}),"
        f" {settings['repeats']} repetition(s) of {settings['duration_s']:g} s per timed row;"
        " medians; the servers alternate repetition by repetition.",
        "",
        "### Targets",
        "",
    ]
    rows = []
    for target in data["targets"]:
        value, limit = target["value"], target["limit"]
        big = "RSS" in target["target"]
        shown = (lambda v: f"{v / 2**20:,.0f} MiB") if big else (
            (lambda v: f"{v * 1e3:.3f} ms") if "p50" in target["target"] else
            (lambda v: f"{v * 1e6:.1f} us") if "CPU" in target["target"] else
            (lambda v: f"{v:,.0f}")
        )  # fmt: skip
        ratio = value / limit if limit else (0.0 if value == 0 else math.inf)
        rows.append([
            target["target"], shown(value), shown(limit), f"{ratio:.2f}",
            "met" if target["met"] else "**missed**", target["note"],
        ])  # fmt: skip
    lines += _table(["target", "measured", "limit", "measured / limit", "", "beside it"], rows)

    lines += ["", "### Floors: onnxruntime in one process (no network)", ""]
    rows = [
        [f"step, batch {batch}", _us(v["call_s"]), _us(v["per_token_s"])]
        for batch, v in floors["step"].items()
    ]
    chunk = floors["chunk"]
    rows.append(
        [f"{chunk['steps']} steps, batch 1", _us(chunk["call_s"]), _us(chunk["per_token_s"])]
    )
    lines += _table(["call", "us per call", "us per token"], rows)

    engine = data.get("engine")
    if engine:
        lines += ["", "### The core alone: `InferenceEngine.step` in one process (no gRPC)", ""]
        rows = [
            [str(e["sessions"]), f"{e['steps_per_s']:,.0f}", _us(1 / e["steps_per_s"]),
             _ms(e["p50_s"])]
            for e in engine.values()
        ]  # fmt: skip
        lines += _table(
            ["concurrent sessions", "steps/s", "us per step (1 / steps/s)", "p50 ms"], rows
        )
    lines += ["", "### Throughput and latency (one token per message unless stated)", ""]
    rows = []
    for key, entry in runs.items():
        if key.startswith(("position-", "predict-")):
            continue
        servers = entry["servers"]
        echo = servers.get("echo")
        for name, r in servers.items():
            ratio = ""
            if name != "echo" and echo:
                ratio = f"{r['steps_per_s'] / max(echo['steps_per_s'], 1e-9):.2f}"
            rows.append([
                entry["title"], name, f"{r['steps_per_s']:,.0f}", f"{r['messages_per_s']:,.0f}",
                ratio, _ms(r["p50_s"]), _ms(r["p90_s"]), _ms(r["p99_s"]), _ms(r["p99.9_s"]),
                str(r["errors"]), _us(r["server_cpu_per_step_s"]),
                f"{100 * r['server_cpu_share']:.0f}%", f"{100 * r['client_cpu_share']:.0f}%",
            ])  # fmt: skip
    lines += _table(
        ["workload", "server", "steps/s", "msg/s", "vs echo", "p50 ms", "p90 ms", "p99 ms",
         "p99.9 ms", "errors", "server CPU us/step", "server CPU", "client CPU"],
        rows,
    )  # fmt: skip

    split_rows = []
    for key, entry in runs.items():
        r = entry["servers"].get("rnnserve")
        # Position rows mix in the untimed feeding message: their means say nothing useful.
        if r and "server_queue_s" in r and not key.startswith("position-"):
            split_rows.append([
                entry["title"], _ms(r.get("server_request_s")), _ms(r["server_queue_s"]),
                _ms(r["server_compute_s"]), f"{r['server_batch_size']:.1f}",
                _ms(r["p50_s"]),
            ])  # fmt: skip
    if split_rows:
        lines += ["", "### Inside rnnserve (its own metrics, means over the run)", ""]
        lines += _table(
            ["workload", "in server per message ms", "queue wait per step ms",
             "onnxruntime call ms", "sessions per call", "client p50 ms"],
            split_rows,
        )  # fmt: skip

    positions = sorted(int(k.split("-")[1]) for k in runs if k.startswith("position-"))
    if positions:
        lines += ["", "### Per-token cost by position: rnnserve vs re-sending the prefix", ""]
        rows = []
        for position in positions:
            stream = runs.get(f"position-{position}", {}).get("servers", {}).get("rnnserve")
            naive = runs.get(f"predict-{position}", {}).get("servers", {}).get("rnnserve")
            rows.append([
                f"{position:,}",
                _ms(stream["p50_s"]) if stream else "-",
                _ms(stream["p99_s"]) if stream else "-",
                _ms(naive["p50_s"]) if naive else "-",
                f"{naive['p50_s'] / stream['p50_s']:,.1f}x" if stream and naive else "-",
                _ms(naive["server_cpu_per_step_s"]) if naive else "-",
            ])  # fmt: skip
        lines += _table(
            ["position", "rnnserve p50 ms/token", "rnnserve p99 ms/token",
             "naive Predict p50 ms/token", "naive / rnnserve", "naive server CPU ms/token"],
            rows,
        )  # fmt: skip

    memory = data.get("memory")
    if memory:
        mib = 2**20
        lines += [
            "",
            "### Memory with idle sessions (fresh server, each session fed one token)",
            "",
        ]
        lines += _table(
            ["sessions", "raw state", "RSS before", "RSS after", "RSS / raw", "growth / raw",
             "bytes per session", "state bytes per session", "failures"],
            [[
                f"{memory['sessions']:,}", f"{memory['raw_state_bytes'] / mib:,.1f} MiB",
                f"{memory['rss_baseline_bytes'] / mib:,.1f} MiB",
                f"{memory['rss_bytes'] / mib:,.1f} MiB", f"{memory['rss_over_raw']:.2f}",
                f"{memory['growth_over_raw']:.2f}", f"{memory['bytes_per_session']:,.0f}",
                f"{memory['state_bytes_per_session']:,}", str(memory["failures"]),
            ]],
        )  # fmt: skip
    for entry in runs.values():
        profile = entry.get("profile")
        if not profile or not profile.get("samples"):
            continue
        lines += ["", f"### Where rnnserve's time goes: {entry['title']} (py-spy, 200 Hz)", ""]
        shares = ", ".join(f"{name} {share:.0%}" for name, share in profile["threads"].items())
        lines += [f"Samples by thread: {shares}. Shares below are of the {profile['main_thread']}"
                  " (the event loop) samples; `Handle._run` self time is gRPC's own Cython code.",
                  ""]  # fmt: skip
        rows = []
        for (frame, own), (frame_in, incl) in zip(
            profile["self"][:12], profile["inclusive"][:12], strict=False
        ):
            rows.append([f"`{frame}`", f"{own:.0%}", f"`{frame_in}`", f"{incl:.0%}"])
        lines += _table(["self (top)", "share", "inclusive (top)", "share"], rows)
    lines += [
        "",
        "![throughput](img/bench-throughput.png)",
        "![latency](img/bench-latency.png)",
        "![position](img/bench-position.png)",
        "![rnnserve, 64 streams](img/load-stream-c64.png)",
    ]
    return "\n".join(lines) + "\n"


def write_doc(path: Path, section: str) -> None:
    """Replace the generated section of the doc (or append one if the markers are missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def render_plots(data: dict[str, Any], folder: Path) -> None:
    """Throughput and latency vs concurrency, and per-token cost vs position, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    runs, floors = data["scenarios"], data["floors"]
    levels = sorted(int(k.split("-c")[1]) for k in runs if k.startswith("stream-c"))

    def series(name: str, field: str) -> list[float]:
        return [runs[f"stream-c{c}"]["servers"][name][field] for c in levels]

    if levels:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, colour, label in _SERVERS:
            if name in runs[f"stream-c{levels[0]}"]["servers"]:
                ax.plot(levels, series(name, "steps_per_s"), marker="o", color=colour, label=label)
        batched = min(floors["step"], key=lambda batch: floors["step"][batch]["per_token_s"])
        ax.axhline(1 / floors["step"][batched]["per_token_s"], color="tab:green", linestyle="--",
                   label=f"onnxruntime in-process, batch {batched}")  # fmt: skip
        ax.axhline(1 / floors["step"]["1"]["per_token_s"], color="tab:olive", linestyle=":",
                   label="onnxruntime in-process, batch 1")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams (one token per message, each waits for its reply)")
        ax.set_ylabel("tokens/s")
        ax.set_title("throughput: rnnserve vs the transport floor (echo)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "bench-throughput.png", dpi=100)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, colour, label in _SERVERS:
            if name not in runs[f"stream-c{levels[0]}"]["servers"]:
                continue
            ax.plot(levels, [v * 1e3 for v in series(name, "p50_s")], marker="o", color=colour,
                    label=f"{label} p50")  # fmt: skip
            ax.plot(levels, [v * 1e3 for v in series(name, "p99_s")], marker="x", color=colour,
                    linestyle="--", label=f"{label} p99")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("latency per message (ms)")
        ax.set_title("latency: rnnserve vs the transport floor (echo)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "bench-latency.png", dpi=100)
        plt.close(fig)

    positions = sorted(int(k.split("-")[1]) for k in runs if k.startswith("position-"))
    if positions:
        fig, ax = plt.subplots(figsize=(7, 4))
        for prefix, label, colour in (
            ("position", "rnnserve Stream (state kept)", "tab:blue"),
            ("predict", "naive: re-send the prefix (Predict)", "tab:red"),
        ):
            points = [
                (p, runs[f"{prefix}-{p}"]["servers"]["rnnserve"]["p50_s"] * 1e3)
                for p in positions
                if f"{prefix}-{p}" in runs
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=colour, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("position in the sequence (tokens already seen)")
        ax.set_ylabel("p50 latency of the next token (ms)")
        ax.set_title("per-token cost by position")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "bench-position.png", dpi=100)
        plt.close(fig)
