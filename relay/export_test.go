package relay

// WorkersWoken is how many times h's workers were woken or started for a
// task.
func WorkersWoken(h *Hub) uint64 {
	h.work.mu.Lock()
	defer h.work.mu.Unlock()
	return h.work.woken
}
