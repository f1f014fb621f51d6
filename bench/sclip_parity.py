"""Parity of SCLIP (gem_engine/last_block.py) with an independent derivation; see bench/last_block_parity.py.

    .venv/bin/python bench/sclip_parity.py

Negative control: the derivation without the last block's residual connection (SCLIP's code keeps it).
"""

from last_block_parity import main

if __name__ == "__main__":
    main("sclip", {"residual": False}, "residual connection dropped")
