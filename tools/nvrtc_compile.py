#!/usr/bin/env python3
"""Compiles a .cu file to PTX with NVRTC through ctypes (no nvcc needed).

Usage: nvrtc_compile.py LIBNVRTC SRC.cu OUT.ptx ARCH [NVRTC OPTION ...]

ARCH is a virtual architecture such as compute_80. The options after it are passed
to NVRTC unchanged; tools/check-kernels.sh passes the same ones the run-time compile
uses (src/kernels/cuda/runtime.rs, `NVRTC_OPTIONS`). Exits non-zero with NVRTC's log
on a compile error.
"""
import ctypes
import sys


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    lib_path, src_path, out_path, arch = sys.argv[1:5]
    extra = sys.argv[5:]
    lib = ctypes.CDLL(lib_path)
    with open(src_path, "rb") as f:
        src = f.read()

    def check(status: int, what: str) -> None:
        if status != 0:
            lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            msg = lib.nvrtcGetErrorString(status).decode()
            raise RuntimeError(f"{what}: {msg}")

    prog = ctypes.c_void_p()
    check(
        lib.nvrtcCreateProgram(
            ctypes.byref(prog), src, src_path.encode(), 0, None, None
        ),
        "nvrtcCreateProgram",
    )
    opts = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in extra]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    status = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace").strip()
    if text:
        print(text, file=sys.stderr)
    if status != 0:
        print(f"NVRTC failed to compile {src_path} for {arch}", file=sys.stderr)
        return 1
    check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
    ptx = ctypes.create_string_buffer(size.value)
    check(lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    with open(out_path, "wb") as f:
        f.write(ptx.value)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
