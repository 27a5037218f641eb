"""``python -m clefctl ...`` runs the command line, e.g. under torchrun:
``torchrun --nproc_per_node 8 -m clefctl finetune --dataset bp4d ...`` (docs/scale.md)."""

from clefctl.cli import main

if __name__ == "__main__":
    main()
