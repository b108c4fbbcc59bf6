package server

import kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"

// eventStream serialises messages onto a server stream: builds report
// progress from their own goroutine, and a gRPC stream must be written by
// one goroutine at a time.
type eventStream[T any] struct {
	events chan T
	done   chan error
}

func newEventStream[T any](send func(T) error) *eventStream[T] {
	s := &eventStream[T]{events: make(chan T, 64), done: make(chan error, 1)}

	go func() {
		var err error

		for ev := range s.events {
			if err == nil {
				err = send(ev)
			}
		}

		s.done <- err
	}()

	return s
}

// progress queues ev unless the client is behind: a slow client skips
// progress, never the result.
func (s *eventStream[T]) progress(ev T) {
	select {
	case s.events <- ev:
	default:
	}
}

// finish sends last if the work succeeded (err == nil), closes the stream
// and returns the work's error, else the stream's.
func (s *eventStream[T]) finish(last T, err error) error {
	if err == nil {
		s.events <- last
	}

	close(s.events)

	if sendErr := <-s.done; err == nil {
		err = sendErr
	}

	return err
}

// progressEvent is a builder event as the API's Progress message.
func progressEvent(phase, artifact, message string, done, total int64) *kilnv1.Progress {
	return &kilnv1.Progress{Phase: phase, Artifact: artifact, BytesDone: done, BytesTotal: total, Message: message}
}
