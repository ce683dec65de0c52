"""``cepd-deploy compress``: train (or load) a dense model, run CEPD ADMM, fine-tune, save."""

from __future__ import annotations

import argparse

from cepd_deploy import threads
from cepd_deploy.cli.common import add_json_arg, fraction, output_path, print_json
from cepd_deploy.names import ALLOCATIONS


def add_training_args(p: argparse.ArgumentParser, *, own_network: bool = False) -> None:
    """Options shared with ``analyze admm-vs-direct`` (defaults from CompressConfig);
    ``own_network``: ``--arch`` may also name a network as ``MODULE:ATTR`` (with ``--model-args``)."""
    from cepd_deploy.compress.config import CompressConfig

    d = CompressConfig(output="")
    if own_network:
        p.add_argument("--arch", default="resnet20",
                       help="zoo architecture (default resnet20), or your own network as MODULE:ATTR "
                       "(pkg.nets:make_net or path/to/nets.py:MyNet, a class or factory: naming it imports "
                       "and runs that code; arguments with --model-args)")  # fmt: skip
        p.add_argument("--model-args", metavar="JSON",
                       help="""keyword arguments of a MODULE:ATTR --arch as a JSON object, e.g. """
                       """'{"num_classes": 10}'; recorded in the output""")  # fmt: skip
    else:
        p.add_argument("--arch", default="resnet20", help="zoo architecture (default resnet20)")
    p.add_argument("--data", default="digits",
                   help="digits (embedded, default), cifar10:PATH (python batches) or imagefolder:PATH")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="filter sparsity of S (default 0.9)")
    p.add_argument("--layout", default=d.layout, help="TT layout (default o-k-i; eq9, oo-k-ii, ...)")
    p.add_argument("--weights", help="a dense model file with trained weights (skips baseline training)")
    p.add_argument("--epochs-baseline", type=int, default=d.epochs_baseline, metavar="K",
                   help=f"dense baseline epochs without --weights (default {d.epochs_baseline})")
    p.add_argument("--epochs-admm", type=int, default=d.epochs_admm, metavar="N",
                   help=f"ADMM epochs (default {d.epochs_admm})")
    p.add_argument("--epochs-finetune", type=int, default=d.epochs_finetune, metavar="M",
                   help=f"fine-tuning epochs of the compact model (default {d.epochs_finetune})")
    p.add_argument("--lr", type=float, default=d.lr_admm, help=f"ADMM learning rate (default {d.lr_admm})")
    p.add_argument("--lr-baseline", type=float, default=d.lr_baseline,
                   help=f"baseline learning rate (default {d.lr_baseline})")
    p.add_argument("--lr-finetune", type=float, default=d.lr_finetune,
                   help=f"fine-tuning learning rate (default {d.lr_finetune})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"per process (default {d.batch_size})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="SGD weight decay (default 1e-4)")
    p.add_argument("--admm-lambda", type=float, default=d.admm_lambda,
                   help=f"ADMM penalty lambda at epoch 0 (default {d.admm_lambda})")
    p.add_argument("--admm-lambda-growth", type=float, default=d.admm_lambda_growth,
                   help=f"lambda factor per epoch, 1 = constant (default {d.admm_lambda_growth})")
    p.add_argument("--admm-lambda-max", type=float, default=d.admm_lambda_max,
                   help=f"lambda cap (default {d.admm_lambda_max})")
    p.add_argument("--project-every", type=int, default=d.project_every, metavar="K",
                   help=f"ADMM round every K SGD steps, 0: once per epoch (default {d.project_every})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for init, data order, augmentation")
    p.add_argument("--train-limit", type=int, metavar="N",
                   help="train on the first N images only (quick runs)")
    p.add_argument("--test-limit", type=int, metavar="N",
                   help="evaluate on the first N test images only (quick runs)")
    p.add_argument("--image-size", type=int, help="imagefolder image size (default 224)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes for image folders")
    p.add_argument("--threads", type=threads.arg, help="torch CPU threads (default: torch's choice)")


def config_from(args: argparse.Namespace, **overrides):
    """The CompressConfig of the training options in ``args``, ``overrides`` on top."""
    from cepd_deploy.compress.config import CompressConfig

    kw = dict(
        arch=args.arch, data=args.data, sparsity=args.sparsity, layout=args.layout, weights=args.weights,
        epochs_baseline=args.epochs_baseline, epochs_admm=args.epochs_admm,
        epochs_finetune=args.epochs_finetune, lr_baseline=args.lr_baseline, lr_admm=args.lr,
        lr_finetune=args.lr_finetune, batch_size=args.batch_size, weight_decay=args.weight_decay,
        admm_lambda=args.admm_lambda, admm_lambda_growth=args.admm_lambda_growth,
        admm_lambda_max=args.admm_lambda_max, project_every=args.project_every, seed=args.seed,
        train_limit=args.train_limit, test_limit=args.test_limit, image_size=args.image_size,
        workers=args.workers, threads=args.threads,
    )  # fmt: skip
    kw.update(overrides)
    return CompressConfig(**kw)


def register(sub) -> None:
    """Add ``compress`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "compress",
        help="compress a network with CEPD ADMM (train/load baseline, ADMM, fine-tune)",
        description="Train the dense baseline (or load --weights), allocate TT ranks and kept filters "
        "for the target, run ADMM with hard constraints, convert to the compact CEPD model, fine-tune "
        "and save it. Writes OUTPUT and OUTPUT's .log.jsonl (--plot: a PNG of the curves); checkpoints "
        "every epoch (OUTPUT.ckpt, resume with --resume). Runs under torchrun for DistributedDataParallel.",
    )
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--flops-remaining", type=fraction, help="target fraction of dense MACs, e.g. 0.5")
    goal.add_argument("--params-remaining", type=fraction, help="target fraction of dense params")
    goal.add_argument("--config", help="YAML/JSON per-layer ranks (as for convert)")
    add_training_args(p, own_network=True)
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                   help="how the target is spread over layers (as for convert; default uniform)")
    p.add_argument("--baseline-out", help="also save the trained dense baseline here")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="output CEPD model file (.pt)")
    p.add_argument("--plot", metavar="PATH", help="also draw the loss/accuracy curves as a PNG here")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``compress``: check the output paths, run the pipeline and print what it wrote (rank 0 only
    under torchrun)."""
    from cepd_deploy.compress.pipeline import compress

    out = output_path(args.output)
    if args.baseline_out:
        output_path(args.baseline_out)
    if args.plot:
        output_path(args.plot, suffix=".png")
    cfg = config_from(args, output=str(out), flops_remaining=args.flops_remaining,
                      params_remaining=args.params_remaining, config=args.config,
                      baseline_out=args.baseline_out, resume=args.resume,
                      allocation=args.allocation, plot=args.plot)  # fmt: skip
    result = compress(cfg, model_fn=_own_network(args), progress=not args.no_progress)
    if not result["main_process"]:
        return 0  # under torchrun only rank 0 reports
    result.pop("main_process")
    if args.json:
        print_json(result)
    else:
        print(f"wrote {out}: accuracy {result['accuracy']:.2f}% (dense baseline "
              f"{result['baseline_accuracy']:.2f}%, after ADMM before fine-tuning "
              f"{result['admm_accuracy']:.2f}%), {result['flops_remaining']:.1%} FLOPs and "
              f"{result['params_remaining']:.1%} params remaining; log {result['log']}"
              + (f", curves {result['plot']}" if result["plot"] else ""))  # fmt: skip
    return 0


def _own_network(args: argparse.Namespace):
    """A builder of the ``MODULE:ATTR`` network ``--arch`` names (None for a zoo name), checked now."""
    from cepd_deploy.errors import CEPDError
    from cepd_deploy.model import reference
    from cepd_deploy.model.zoo import ZOO

    kwargs = reference.parse_args(args.model_args)
    if args.arch in ZOO or not reference.looks_like(args.arch):
        if kwargs is not None:
            raise CEPDError("--model-args goes with a MODULE:ATTR --arch")
        return None
    reference.parse(args.arch)
    return lambda: reference.build(args.arch, kwargs)
