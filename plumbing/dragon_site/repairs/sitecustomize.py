"""The repairs of DragonHPC 0.15.0's crashes (REPAIRS in ../sitecustomize.py, where they are
explained), in every Python process of the runtimes that 7 and 8 start: plumbing/dragon_fixes.py
puts this folder on their PYTHONPATH always. PC_DRAGON_REPAIRS=off keeps them out."""
import os
import runpy

_HERE = os.path.dirname(os.path.abspath(__file__))
_SITE = runpy.run_path(os.path.join(os.path.dirname(_HERE), "sitecustomize.py"),
                       run_name="dragon_site")

if __name__ == "sitecustomize":
    if not _SITE["switched_off"](_SITE["REPAIRS_SWITCH_ENV"]):
        _SITE["install_repairs"]()
    _SITE["run_next_sitecustomize"](_HERE)
