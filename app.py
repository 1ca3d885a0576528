"""``python app.py --run runs/<name>``: the workbench in the browser, on 127.0.0.1.

Parsing, building and launching live in :mod:`workbench.ui.app`; this file only makes sure
Gradio's analytics are off before Gradio is imported.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from workbench.ui.app import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
