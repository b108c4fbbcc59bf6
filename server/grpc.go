package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// newGRPCServer is the one place that builds the gRPC server: interceptors,
// limits, services, reflection and health.
func newGRPCServer(logger *slog.Logger, domain *schematics, rel *releases, img *images, healthSrv *health.Server, g *guard) *grpc.Server {
	srv := grpc.NewServer(
		// A CreateSchematic request holds one schematic.
		grpc.MaxRecvMsgSize(int(domain.limits.MaxBytes)+64<<10),
		// The guard runs inside the first, so its refusals are logged and
		// classified like any other error.
		grpc.ChainUnaryInterceptor(unaryInterceptor(logger), g.unary),
		grpc.ChainStreamInterceptor(streamInterceptor(logger)),
	)

	kilnv1.RegisterSchematicServiceServer(srv, &schematicService{domain: domain})
	kilnv1.RegisterReleaseServiceServer(srv, &releaseService{domain: rel})
	kilnv1.RegisterImageServiceServer(srv, &imageService{domain: img})
	kilnv1.RegisterImageCacheServiceServer(srv, &imageCacheService{domain: img})
	healthpb.RegisterHealthServer(srv, healthSrv)
	reflection.Register(srv)

	return srv
}

func grpcRequestID(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("x-request-id"); len(v) > 0 {
			return v[0]
		}
	}

	return newRequestID()
}

// unaryInterceptor classifies domain errors, turns panics into Internal and
// logs each call.
func unaryInterceptor(logger *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		id := grpcRequestID(ctx)
		ctx = context.WithValue(ctx, requestIDKey{}, id)
		start := time.Now()

		defer func() {
			if p := recover(); p != nil {
				logger.ErrorContext(ctx, "panic in gRPC handler", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal server error")
			}

			logCall(ctx, logger, info.FullMethod, id, start, err)
		}()

		resp, err = handler(ctx, req)

		return resp, toStatusLogged(ctx, logger, info.FullMethod, err)
	}
}

func streamInterceptor(logger *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		ctx := ss.Context()
		id := grpcRequestID(ctx)
		start := time.Now()

		defer func() {
			if p := recover(); p != nil {
				logger.ErrorContext(ctx, "panic in gRPC handler", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal server error")
			}

			logCall(ctx, logger, info.FullMethod, id, start, err)
		}()

		return toStatusLogged(ctx, logger, info.FullMethod, handler(srv, &requestIDStream{ServerStream: ss, id: id}))
	}
}

type requestIDStream struct {
	grpc.ServerStream

	id string
}

func (s *requestIDStream) Context() context.Context {
	return context.WithValue(s.ServerStream.Context(), requestIDKey{}, s.id)
}

func toStatusLogged(ctx context.Context, logger *slog.Logger, method string, err error) error {
	st := toStatus(err)
	if err != nil && codeOf(err) == codes.Internal {
		logger.ErrorContext(ctx, "gRPC call failed", "method", method, "error", err)
	}

	return st
}

func logCall(ctx context.Context, logger *slog.Logger, method, id string, start time.Time, err error) {
	level := slog.LevelInfo
	if method == healthpb.Health_Check_FullMethodName || method == healthpb.Health_Watch_FullMethodName {
		level = slog.LevelDebug
	}

	logger.Log(ctx, level, "grpc call", "method", method, "code", status.Code(err).String(),
		"duration", time.Since(start), "request_id", id)
}
