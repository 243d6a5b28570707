"""The console's pages (one per file) and its dialogs (modals.py); base.py holds what they share."""
