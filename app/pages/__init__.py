"""The panel's pages: one module each, each a widget given the services it uses."""
