"""maskrt's command line: `maskrt <verb>`, one thin module per verb that reads the flags and calls into the stages,
and `trt-convert`, the short name of `maskrt convert`. cli/main.py maps what a verb raises to one line on stderr and
an exit code. Nothing here imports a stage before its verb runs, so the edge install (no PyTorch) runs `maskrt infer`
and `maskrt bench` without loading convert/.
"""
