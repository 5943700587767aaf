"""The shared basics every floor of the package stands on, importing nothing of it and nothing heavy: the user error
and its one-line message (`errors`), atomic file writes (`files`), and the names and defaults that the library and
the command line share (`constants`)."""
