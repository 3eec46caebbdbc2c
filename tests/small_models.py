"""Each supported family at its real input size and window, but narrow and shallow (embed 32,
2-8 heads, two blocks per stage): the same module layout and merges as the released models, at
a fraction of their cost; and swin_t with its own head counts at head width 16 (`tiny_heads`),
for selection rules, where the number of heads matters. Tests of structure (surgery, export,
bookkeeping) use these; the released sizes run where the size itself is the point (the
end-to-end CLI runs, -m slow)."""
import timm
import torch
import torchvision

TV_SWIN = torchvision.models.swin_transformer
NARROW = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 4, 8))


def _torchvision(window: int, v2: bool = False) -> torch.nn.Module:
    extra = dict(block=TV_SWIN.SwinTransformerBlockV2, downsample_layer=TV_SWIN.PatchMergingV2) if v2 else {}
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=NARROW["embed_dim"],
                                              depths=list(NARROW["depths"]), num_heads=list(NARROW["num_heads"]),
                                              window_size=[window, window], **extra)


SMALL_FAMILIES = {
    "swin_tiny_patch4_window7_224": lambda: timm.create_model("swin_tiny_patch4_window7_224", **NARROW),
    "swin_s3_tiny_224": lambda: timm.create_model("swin_s3_tiny_224", **NARROW),
    "swinv2_tiny_window8_256": lambda: timm.create_model("swinv2_tiny_window8_256", **NARROW),
    "swinv2_cr_tiny_ns_224": lambda: timm.create_model("swinv2_cr_tiny_ns_224", **NARROW),
    "torchvision:swin_t": lambda: _torchvision(7),
    "torchvision:swin_v2_t": lambda: _torchvision(8, v2=True),
}


def small(name: str) -> torch.nn.Module:
    """The narrow, shallow variant of family `name` (a key of SMALL_FAMILIES): seed 0, eval mode."""
    torch.manual_seed(0)
    return SMALL_FAMILIES[name]().eval()


def tiny_heads() -> torch.nn.Module:
    """swin_t's 3, 6, 12 and 24 heads at head width 16, two blocks per stage: seed 0, eval mode."""
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", embed_dim=48, depths=(2, 2, 2, 2),
                             num_heads=(3, 6, 12, 24)).eval()
