"""Parity of ClearCLIP (gem_engine/last_block.py) with an independent derivation; see bench/last_block_parity.py.

    .venv/bin/python bench/clearclip_parity.py

Negative control: the derivation with the last block's residual connection kept (ClearCLIP drops it).
"""

from last_block_parity import main

if __name__ == "__main__":
    main("clearclip", {"residual": True}, "residual connection kept")
