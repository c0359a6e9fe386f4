"""`dequant-app [--ckpt CKPT] [--host 127.0.0.1] [--port 7860]`: serve the palette editor page.

Without --ckpt (or with `--ckpt pretrained`) it serves the model shipped in the package
(`dequant.models.pretrained`). Listens on 127.0.0.1 unless --host says otherwise (then warns that anyone on the
network can use it). A checkpoint that cannot load (a path that names nothing, a shipped model missing from the
install or damaged), or a missing optional dependency, is a one-line error and exit code 2, and nothing is served.
The page serves no file outside Gradio's own upload and cache folders (nothing is added to `allowed_paths`);
uploads are capped in bytes by Gradio and in pixels by the editor, before decoding.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dequant.app.editor import MAX_PIXELS

PROG = "dequant-app"
LOCAL_HOST = "127.0.0.1"
# Bytes an upload may have (a 20 MP photo as PNG stays well under it); Gradio refuses larger ones unread.
MAX_FILE_SIZE = "100mb"
# Gradio's request queue: one event of the page at a time (renders also carry concurrency_limit=1, page.build).
QUEUE = {"default_concurrency_limit": 1}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `dequant-app` argument parser."""
    from dequant.edit import CKPT_HELP, DEFAULT_MAX_SIDE, _Parser, _positive
    from dequant.models.pretrained import PRETRAINED

    p = _Parser(prog=PROG, description="Serve the dequant palette editor in the browser (docs/app.md).")
    p.add_argument("--ckpt", default=PRETRAINED, help=CKPT_HELP)
    p.add_argument("--host", default=LOCAL_HOST,
                   help=f"address to listen on (default {LOCAL_HOST}: this machine only; anything else lets "
                        "anyone on the network use the page)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument("--time-limit", type=_positive_float, default=300.0, metavar="S",
                   help="seconds a render may take before it is stopped (default 300)")
    p.add_argument("--max-side", type=_positive, default=DEFAULT_MAX_SIDE, metavar="PX",
                   help=f"long side the page edits and the model renders at; results are resized back to the "
                        f"photo's own size (default {DEFAULT_MAX_SIDE})")
    p.add_argument("--max-megapixels", type=_positive_float, default=MAX_PIXELS / 1e6, metavar="MP",
                   help=f"uploads with more pixels are refused unread (default {MAX_PIXELS / 1e6:.0f})")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return p


def make_page(args: argparse.Namespace):  # noqa: ANN201 - returns a gradio Blocks; gradio is imported lazily
    """Load the model and build the page (ValueError with a one-line reason when the checkpoint cannot load:
    `Renderer` resolves `pretrained` and checks the path before loading)."""
    from dequant.app.editor import Renderer
    from dequant.app.page import Page, build

    renderer = Renderer(args.ckpt, time_limit=args.time_limit, device=args.device)
    page = Page(renderer, max_side=args.max_side, max_pixels=int(args.max_megapixels * 1e6))
    return page, build(page)


def launch_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments `dequant-app` gives Gradio's `launch()`: the address, the upload size cap, no error
    details, no server-side rendering, no favicon, footer links, PWA or MCP server, and (through what is left out)
    no `allowed_paths`: nothing outside Gradio's upload and cache folders is served."""
    return {"server_name": args.host, "server_port": args.port, "max_file_size": MAX_FILE_SIZE, "show_error": False,
            "ssr_mode": False, "favicon_path": None, "footer_links": [], "pwa": False, "mcp_server": False,
            "quiet": False}


def serve(demo, args: argparse.Namespace, block: bool = True) -> None:  # noqa: ANN001 - a gradio Blocks
    """Start the page as `dequant-app` does: its queue, then `launch()` with `launch_settings(args)`; with
    `block=False` it returns once the server listens (tests stop it with `demo.close()`)."""
    demo.queue(**QUEUE)
    demo.launch(**launch_settings(args), prevent_thread_lock=not block)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `dequant-app`; returns the exit code (2 on bad arguments or a checkpoint that cannot load)."""
    from dequant.edit import one_line

    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401 - only to fail early with a clear message
    except ImportError:
        print(f"{PROG}: error: Gradio is not installed; pip install 'dequant[app]'", file=sys.stderr)
        return 2
    try:
        _, demo = make_page(args)
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    if args.host != LOCAL_HOST:
        print(f"{PROG}: warning: listening on {args.host}: anyone who can reach this machine on port {args.port} "
              "can use the page and the model", file=sys.stderr)
    serve(demo, args)
    return 0
