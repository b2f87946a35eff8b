"""open_clip's own training script with hbfast's fused losses: a launcher.

open_clip_train has no loss hook: ``open_clip_train.main.main`` builds its loss with
``create_loss(args)``, a name it imports from open_clip. This launcher rebinds that name to
:func:`create_loss` below, which returns hbfast's drop-ins (same arguments, same numbers, no
B x B logits in the contrastive part) for the CLIP, SigLIP, CoCa and distillation losses, and then
runs open_clip_train's main with the command line unchanged (horovod keeps open_clip's own losses).
Needs open_clip_torch with its training extra (``pip install 'open_clip_torch[training]'``, which brings torchvision):

    python examples/open_clip_train.py --model ViT-B-32 --train-data ... --batch-size 4096 [--siglip]
    torchrun --nproc_per_node 8 examples/open_clip_train.py --local-loss --gather-with-grad ...
"""
import sys

from hbfast.integrations.open_clip import ClipLoss, CoCaLoss, DistillClipLoss, SigLipLoss


def create_loss(args):
    """open_clip.create_loss with hbfast's drop-ins (horovod runs keep open_clip's own losses)."""
    if args.horovod:
        from open_clip import create_loss as open_clip_create_loss

        return open_clip_create_loss(args)
    gather = dict(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, cache_labels=True,
                  rank=args.rank, world_size=args.world_size)
    if args.distill:
        return DistillClipLoss(**gather)
    if "coca" in args.model.lower():
        return CoCaLoss(caption_loss_weight=args.coca_caption_loss_weight,
                        clip_loss_weight=args.coca_contrastive_loss_weight, **gather)
    if args.siglip:
        return SigLipLoss(rank=args.rank, world_size=args.world_size, dist_impl=args.loss_dist_impl)
    return ClipLoss(**gather)


def main(argv=None):
    import open_clip_train.main as train_main  # imports open_clip, hence torchvision

    train_main.create_loss = create_loss  # main() looks the name up in its module at call time
    return train_main.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
