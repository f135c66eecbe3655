"""Make the project's ``tailor`` package importable from ``python benchmarks/<script>.py``."""

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))


def main(kind: str, parser) -> int:
    """Parse the script's arguments, run the measurement *kind*, and turn a TailorError into one line."""
    from tailor import measure
    from tailor.errors import TailorError

    args = vars(parser.parse_args())
    try:
        measure.run(kind, **{k: v for k, v in args.items() if v is not None})
    except TailorError as e:
        print(f"tailor: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tailor: interrupted", file=sys.stderr)
        return 130
    return 0
