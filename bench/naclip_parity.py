"""Parity of NACLIP (gem_engine/last_block.py) with an independent derivation; see bench/last_block_parity.py.

    .venv/bin/python bench/naclip_parity.py

Negative control: the derivation with a Gaussian window of std 3 patches instead of 5.
"""

from last_block_parity import main

if __name__ == "__main__":
    main("naclip", {"std": 3.0}, "Gaussian window std 3 instead of 5")
