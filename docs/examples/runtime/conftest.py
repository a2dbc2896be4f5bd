from make_data import make_books

make_books()  # data/books.sqlite, once
