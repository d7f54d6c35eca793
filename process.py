#!/usr/bin/env python3
"""Container entrypoint: liver masks for every MRI volume under /input, written to /output.

The same as ``sslmedsam2 infer``: ``python process.py --help`` lists the options. The exit code
is non-zero when any case failed; each failure is logged and recorded in the output's
``sslmedsam2-summary.json``.
"""

from sslmedsam2.cli import dispatch, infer_parser


def run() -> int:
    return dispatch(infer_parser(prog="process.py").parse_args())


if __name__ == "__main__":
    raise SystemExit(run())
