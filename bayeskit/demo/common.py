"""What the demo's stops share: headers, health lines, trace plots, whole tables, one torch thread."""

from __future__ import annotations

import functools

__all__ = ["print_header", "report_health", "plot_trace", "pandas_display", "one_thread"]


def print_header(text):
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


def report_health(label, post, *, if_unhealthy=None):
    """One line for a healthy result, else each finding of its health report (see bayeskit.health) and then
    ``if_unhealthy``, the stop's own word on why it shows the result all the same."""
    findings = post.health()
    if not findings:
        print(f"health of {label}: ok")
        return
    print(f"health of {label}: {len(findings)} finding(s)")
    for finding in findings:
        print(f"  - {finding.message}")
    if if_unhealthy:
        print(f"  {if_unhealthy}")


def plot_trace(post, path):
    """The engine's per-step trace (mean log density and update size)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [n for n in ("log_prob", "phi_norm", "step_size") if n in post.trace]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(post.trace[name].cpu().numpy())
        ax.set_xlabel("step")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class pandas_display:
    """Print whole summary tables instead of pandas' truncated view."""

    def __enter__(self):
        import pandas as pd

        self._context = pd.option_context("display.max_rows", 200, "display.width", 120,
                                          "display.max_columns", 20)
        self._context.__enter__()

    def __exit__(self, *exc):
        self._context.__exit__(*exc)


def one_thread(demo):
    """Run a demo stop on one torch thread: many small tensor operations per time step, on which a thread
    pool costs more than it saves."""

    @functools.wraps(demo)
    def wrapped(*args, **kwargs):
        from bayeskit.parallel import TaskContext

        with TaskContext():
            return demo(*args, **kwargs)

    return wrapped
