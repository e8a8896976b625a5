"""ARM emulation: run the same .tflite / .ptl / ncnn / .pte / .onnx / OpenVINO / .mnn files in the real
aarch64 runtimes under qemu-user.

``prepare()`` builds the aarch64 user space once (``python -m edgekit.arm``); ``launcher()``
gives the command and environment that make ``edgekit.isolate.run_artifact`` run there.
"""
from .launch import check_cpu, cpu_features, launcher, stage_sources, xnnpack_active
from .setup import CPUS, ArmEnv, find, prepare

__all__ = ["ArmEnv", "CPUS", "check_cpu", "cpu_features", "find", "launcher", "prepare", "stage_sources",
           "xnnpack_active"]
