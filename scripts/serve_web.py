"""Serve the browser page (embed/web) with a bundle beside it, on this machine only.

    python scripts/serve_web.py BUNDLE [--port 8000]     # or: make serve-web BUNDLE=demo/bundle

Open the printed address: the page loads the bundle from /bundle/ ("Load the served bundle", or add ?demo to the
address), and scores the images you drop on it in the browser. The server only hands out files: the page's own
(embed/web, with onnxruntime-web's WASM files from its node_modules) and the bundle's.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import mimetypes
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "embed" / "web"
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files of embed/web, and under /bundle/ the bundle's files (nothing outside either folder)."""

    def __init__(self, *args: object, bundle: Path, **kwargs: object) -> None:
        self.bundle = bundle
        super().__init__(*args, directory=str(WEB), **kwargs)  # type: ignore[arg-type]

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith("/bundle/"):
            name = Path(clean[len("/bundle/"):]).name  # one level: the bundle's own files
            return str(self.bundle / name)
        return super().translate_path(path)

    def log_message(self, format: str, *args: object) -> None:  # quiet: one line per error only
        if args and str(args[1]).startswith(("4", "5")):
            super().log_message(format, *args)


def serve(bundle: Path, port: int) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1 (``port`` 0: any free port); call ``serve_forever`` on it."""
    if not (bundle / "edgevae.json").is_file():
        raise SystemExit(f"{bundle}: not a bundle folder (no edgevae.json); export one with 'edgevae export'")
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        raise SystemExit("embed/web has no node_modules: run `make embed-setup` (npm ci) first")
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, bundle=bundle.resolve()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    server = serve(args.bundle, args.port)
    print(f"serving embed/web with {args.bundle} at http://127.0.0.1:{server.server_address[1]}/?demo", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
