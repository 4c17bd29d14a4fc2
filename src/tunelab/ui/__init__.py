"""`tunelab ui`: a local web page over run folders (views in browse, chat in chat, page in app)."""
