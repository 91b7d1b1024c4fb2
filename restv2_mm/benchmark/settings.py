"""What every candidate of one benchmark run shares."""
from dataclasses import dataclass, field
from typing import List, Optional

from .candidates import DETECTIONS_PER_IMAGE, OUR_CONFIG


@dataclass
class Settings:
    shape: List[int] = field(default_factory=lambda: [800, 1280])  # H, W
    batch: int = 1
    device: str = 'cpu'
    amp: Optional[str] = None  # None | 'bf16' | 'fp16'
    channels_last: bool = False
    compile: bool = False
    threads: Optional[int] = None
    seed: int = 0
    config: str = OUR_CONFIG  # restv2 / restv2-plain
    detections: int = DETECTIONS_PER_IMAGE  # per image, full-model detection inference
    malloc: str = 'cached'  # 'cached': freed CPU memory stays in the process; 'system': glibc's
    # CUDA: let cuDNN time its convolution algorithms in the warm-up runs and keep the fastest
    # (torch.backends.cudnn.benchmark), as MMDetection's FPS benchmark and the papers' do.
    cudnn_benchmark: bool = True
