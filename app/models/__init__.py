"""The panel's models: Qt item models for the tables and lists, and the plain-Python state behind them."""
