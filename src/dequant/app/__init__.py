"""`dequant-app`: a palette editor in the browser (Gradio), for the dequantization model (docs/app.md).

`editor` holds what the page does (photos, palettes, regions, renders; no Gradio), `page` the Gradio page, `cli`
the console script. Importing this package does not import Gradio.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `dequant-app`; see `dequant.app.cli`."""
    from dequant.app.cli import main as cli_main

    return cli_main(argv)
