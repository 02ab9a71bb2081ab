__version__ = "0.1.0"

# The name on the package index: `fdn` there is an unrelated package (file renaming), so
# installing `fdn` would give that one. The import name and the command stay `fdn`.
DISTRIBUTION = "fdn-denoise"
