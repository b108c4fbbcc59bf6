package server

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// errSchematicNotFound is what a client sees for an unknown or malformed
// schematic ID; the text is the public factory's.
var errSchematicNotFound = errors.New("schematic not found")

// invalidArgumentError marks errors in a request's arguments that are not
// schematic parse errors (a bad page token, say).
type invalidArgumentError struct{ msg string }

func (e *invalidArgumentError) Error() string { return e.msg }

// codeOf is the only classifier of domain errors. Anything it does not know
// is Internal, and its detail stays in the log.
func codeOf(err error) codes.Code {
	var (
		invalidArg     *invalidArgumentError
		invalidVersion *artifacts.InvalidVersionError
		badExtension   *artifacts.ExtensionError
		noTalosctl     *artifacts.FileError
	)

	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, schematic.ErrInvalid), errors.As(err, &invalidArg), errors.As(err, &invalidVersion),
		errors.Is(err, builder.ErrInvalidPath), errors.As(err, &badExtension),
		errors.Is(err, builder.ErrInvalidCacheRequest), errors.Is(err, imagecache.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, builder.ErrUnsupported):
		return codes.Unimplemented
	case errors.Is(err, errSchematicNotFound), errors.Is(err, storage.ErrNotFound),
		errors.Is(err, artifacts.ErrVersionNotAvailable), errors.Is(err, artifacts.ErrNotMirrored),
		errors.Is(err, imagecache.ErrNotFound), errors.As(err, &noTalosctl), errors.Is(err, artifacts.ErrNoTalosctl):
		return codes.NotFound
	case errors.Is(err, signing.ErrUntrusted), errors.Is(err, release.ErrInvalidCatalog), errors.Is(err, artifacts.ErrLockMismatch):
		return codes.FailedPrecondition
	case errors.Is(err, builder.ErrBusy), storage.IsNoSpace(err):
		return codes.ResourceExhausted
	}

	if s, ok := status.FromError(err); ok {
		return s.Code()
	}

	return codes.Internal
}

// toStatus turns a domain error into the status a client sees: its own text
// for the codes clients act on, a generic text for the rest.
func toStatus(err error) error {
	if err == nil {
		return nil
	}

	if _, ok := status.FromError(err); ok {
		return err
	}

	code := codeOf(err)

	var (
		verr      *artifacts.VersionError
		schemaErr *builder.SchematicNotFoundError
		pathErr   *builder.PathError
		unsupErr  *builder.UnsupportedError
	)

	var busy *builder.BusyError
	if errors.As(err, &busy) {
		return resourceStatus(busy.Error(), reasonBusy, busy.RetryAfter)
	}

	if storage.IsNoSpace(err) {
		return resourceStatus(noSpaceText, reasonNoSpace, 0)
	}

	// The public factory's exact texts where clients may compare them.
	switch {
	case errors.As(err, &schemaErr):
		return status.Error(code, schemaErr.Error())
	case errors.As(err, &verr):
		return status.Error(code, verr.Error())
	case errors.As(err, &pathErr):
		return status.Error(code, pathErr.Error())
	case errors.As(err, &unsupErr):
		return status.Error(code, unsupErr.Error())
	case errors.Is(err, errSchematicNotFound):
		return status.Error(code, errSchematicNotFound.Error())
	case code == codes.NotFound, code == codes.InvalidArgument, code == codes.FailedPrecondition, code == codes.Unimplemented,
		code == codes.Canceled, code == codes.DeadlineExceeded:
		return status.Error(code, err.Error())
	default:
		return status.Error(code, "internal server error")
	}
}

// What a client is told when a write fails for a full disk; the path and
// the rest stay in the log.
const noSpaceText = "kiln's data disk is full: the write was undone and nothing was stored; free space there or lower --asset-cache-size"

// Reasons (google.rpc.ErrorInfo) of the ResourceExhausted statuses, which
// the HTTP surfaces answer differently: a full build queue is 503 with
// Retry-After (try again soon), a full disk 507 (the server needs care).
const (
	errorDomain   = "kiln.dev"
	reasonBusy    = "BUILD_QUEUE_FULL"
	reasonNoSpace = "NO_SPACE"
)

func resourceStatus(msg, reason string, retry time.Duration) error {
	st := status.New(codes.ResourceExhausted, msg)

	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: errorDomain}}
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}

	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}

	return st.Err()
}

// httpStatusOf is the HTTP status of a status, and the Retry-After (in
// seconds) to send with it, if any.
func httpStatusOf(st *status.Status) (int, string) {
	if st.Code() != codes.ResourceExhausted {
		return httpStatus(st.Code()), ""
	}

	code, retry := httpStatus(st.Code()), ""

	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			switch d.GetReason() {
			case reasonBusy:
				code = http.StatusServiceUnavailable
			case reasonNoSpace:
				code = http.StatusInsufficientStorage
			}
		case *errdetails.RetryInfo:
			retry = strconv.FormatInt(int64(math.Ceil(d.GetRetryDelay().AsDuration().Seconds())), 10)
		}
	}

	return code, retry
}

// httpStatus is the HTTP status of a gRPC code, as grpc-gateway maps it, so
// the public routes and the gateway agree. A client that hung up gets 499,
// as the public factory logs it.
func httpStatus(code codes.Code) int {
	switch code {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.FailedPrecondition:
		// An artifact that failed verification, a corrupt catalog or a
		// release re-tagged since it was mirrored: the request was fine,
		// the mirror's content is not usable.
		return http.StatusPreconditionFailed
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Canceled:
		return 499
	default:
		return http.StatusInternalServerError
	}
}
