# The plugin's modules live in src/ (the component's Python path): make them importable here.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
