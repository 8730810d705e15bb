"""A two-process DPO run on a tiny model, for tests/unit/test_dpo_ddp.py (run as a script).

``python ddp_job.py MODEL_DIR PAIRS OUT_DDP OUT_SINGLE``: trains with two CPU processes
(``accelerate.debug_launcher``: fork, gloo on loopback; 2 records per process and step) into
``OUT_DDP``, then with one process and 4 records per step into ``OUT_SINGLE``. Both see the same
global batch, so DDP's averaged gradients match the single process's.
"""

import sys


def _train(model_dir: str, pairs: str, out: str, per_device: int) -> None:
    import torch

    from icon2_lens.dpo.settings import DPOSettings
    from icon2_lens.dpo.train import train_dpo

    torch.set_num_threads(1)
    settings = DPOSettings(
        learning_rate=1e-2, per_device_train_batch_size=per_device, num_train_epochs=1
    )
    train_dpo(model_dir, pairs, out, settings=settings, png=False, warmup_ratio=0.0)


def _ddp(model_dir: str, pairs: str, out: str) -> None:
    _train(model_dir, pairs, out, 2)


def main(argv: list[str]) -> None:
    from accelerate import debug_launcher

    model_dir, pairs, out_ddp, out_single = argv
    debug_launcher(_ddp, args=(model_dir, pairs, out_ddp), num_processes=2)
    _train(model_dir, pairs, out_single, 4)


if __name__ == "__main__":
    main(sys.argv[1:])
