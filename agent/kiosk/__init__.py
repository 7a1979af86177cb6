"""The kiosk: the dock's screen, served by `evidock agent` on 127.0.0.1.

``app.create_app`` builds the web application (pages, live updates, login,
recordings, tagging, playback, the access log); ``grants`` keeps each session's
stated purpose and player grants; ``server.KioskServer`` runs it with uvicorn in
a thread of the daemon; ``i18n`` holds its words in Simplified Chinese (the
default) and English.
"""
