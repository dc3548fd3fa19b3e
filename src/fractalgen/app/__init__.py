"""The web demo's old name, kept for one release: the page now lives in `fractalgen.cli.web`, beside
the command line that serves it (`fractalgen serve`)."""
import warnings

from ..cli.web import *  # noqa: F403  (the page's public names, as they were here)

warnings.warn("fractalgen.app moved to fractalgen.cli.web; the old name goes away in the next release",
              DeprecationWarning, stacklevel=2)
