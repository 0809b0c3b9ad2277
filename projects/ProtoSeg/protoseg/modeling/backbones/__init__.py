from .dilated_resnet import DilatedBasicBlock, build_dilated_resnet_backbone

__all__ = ["DilatedBasicBlock", "build_dilated_resnet_backbone"]
