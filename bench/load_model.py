"""First (GGUF de-quantize + cache) vs second (cached safetensors) load of the embedded model.

    python bench/load_model.py

Uses a fresh temporary TUNELAB_HOME so the first load really converts.
"""

import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ["TUNELAB_HOME"] = home
        from tunelab.models import load_model

        timings = []
        for _ in range(2):
            started = time.perf_counter()
            load_model("smollm2-135m")
            timings.append(time.perf_counter() - started)
    first, second = timings
    print(f"first load (convert + cache): {first:.1f} s")
    print(f"second load (cached):         {second:.1f} s")
    print(f"speed-up:                     {first / second:.1f}x")


if __name__ == "__main__":
    main()
