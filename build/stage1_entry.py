# The stage-1 executable's entry: the same multicall, whose /init is the stage-1 applet.
from k4s.main import main

main(aliases={"init": "stage1"})
