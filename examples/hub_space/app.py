"""MAEST as a Hugging Face Space: the `maest app` web app (styles of a track, their timeline, similar tracks).

The Hub's own inference widget cannot run MAEST (custom code, whole-track segmenting), so the Space runs the app.
Settings (Space variables and secrets):
    MAEST_MODEL: a Hub id or a directory in the Space (default: the 519-style 30 s Discogs model).
    MAEST_INDEX: optional directory of a similarity index built with `maest index` and committed to the Space
        (with the audio of the indexed tracks, at the paths the index records, for the players).
    MAEST_APP_AUTH: a secret, `user:password`: the login the app asks for.
    MAEST_APP_PUBLIC: `1` to serve the app without a login instead (a Space is a public web page unless it is
        private). One of the two must be set: the Space does not start open by accident.

The app serves no file of the Space but its own temporary folder (uploads, results, copies of the neighbours' audio).
"""

import os

from maest.app import AUTH_ENVIRONMENT, launch_app, parse_auth
from maest.inference import DEFAULT_MODEL


def main() -> None:
    public = os.environ.get("MAEST_APP_PUBLIC", "") == "1"
    launch_app(
        model=os.environ.get("MAEST_MODEL", DEFAULT_MODEL),
        index=os.environ.get("MAEST_INDEX") or None,
        host="0.0.0.0",  # a Space serves from its container to the Hub's proxy
        port=int(os.environ.get("PORT", "7860")),
        auth=parse_auth(os.environ.get(AUTH_ENVIRONMENT)),
        allow_unauthenticated=public,
    )


if __name__ == "__main__":
    main()
