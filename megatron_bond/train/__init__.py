"""The J-BOND trainer (docs/training.md): step.py is one step top to bottom; loop.py runs them."""
