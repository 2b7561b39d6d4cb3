"""Read a tutorial script (percent cells) as a notebook for myst-nb, with the Python kernel named.

jupytext alone leaves the notebook without ``kernelspec``/``language_info``,
so myst-nb cannot highlight the cells of a page that is read from its cache
or not executed; naming the kernel here fixes both.
"""

import jupytext

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


def read_percent_script(text, **kwargs):
    notebook = jupytext.reads(text, fmt="py:percent", **kwargs)
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.metadata.setdefault("language_info", LANGUAGE_INFO)
    return notebook
