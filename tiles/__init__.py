"""Ground station: orthophotos -> metric tile grid -> embedded TilePack with a FAISS index."""
