"""MAEST as a Hugging Face Space: the `maest app` web app (styles of a track, their timeline, similar tracks).

The Hub's own inference widget cannot run MAEST (custom code, whole-track segmenting), so the Space runs the app.
Settings (Space variables):
    MAEST_MODEL: a Hub id or a directory in the Space (default: the 519-style 30 s Discogs model).
    MAEST_INDEX: optional directory of a similarity index built with `maest index` and committed to the Space
        (with the audio of the indexed tracks, at the paths the index records, for the players).
"""

import os

from maest.app import launch_app
from maest.inference import DEFAULT_MODEL


if __name__ == "__main__":
    launch_app(
        model=os.environ.get("MAEST_MODEL", DEFAULT_MODEL),
        index=os.environ.get("MAEST_INDEX") or None,
        host="0.0.0.0",  # a Space serves from its container to the Hub's proxy
        port=int(os.environ.get("PORT", "7860")),
    )
